"""The parts of LM generation the chat engine (`serving/engines/chat.py`) is built from; see its docstring."""
