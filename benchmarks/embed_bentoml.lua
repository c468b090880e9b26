-- wrk script: single-text requests to a BentoML batchable API (each a different text), with answers
-- counted by status. A request carries one text: `{"texts": ["..."]}` is a batch of 1 along batch_dim 0.
--   wrk -t2 -c64 -d15s --timeout 30s -s benchmarks/embed_bentoml.lua http://127.0.0.1:3100/encode
-- Set BODY_KIND=openai to send our server's /v1/embeddings body instead (same texts, same counting).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local openai = os.getenv("BODY_KIND") == "openai"
local threads = {}
local id = 0

setup = function(thread)
  id = id + 1
  thread:set("tid", id)
  table.insert(threads, thread)
end

n = 0
s2xx, s429, s503, s504, sother = 0, 0, 0, 0, 0

request = function()
  n = n + 1
  local text = "query number " .. tid .. "-" .. n .. " about python files"
  if openai then
    return wrk.format(nil, nil, nil, '{"model":"embedder","input":"' .. text .. '"}')
  end
  return wrk.format(nil, nil, nil, '{"texts":["' .. text .. '"]}')
end

response = function(status, headers, body)
  if status >= 200 and status < 300 then s2xx = s2xx + 1
  elseif status == 429 then s429 = s429 + 1
  elseif status == 503 then s503 = s503 + 1
  elseif status == 504 then s504 = s504 + 1
  else sother = sother + 1 end
end

done = function(summary, latency, requests)
  local t = {s2xx = 0, s429 = 0, s503 = 0, s504 = 0, sother = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  -- one machine-readable line, last: latency percentiles (ms) cover every answer, 2xx or not
  io.write(string.format(
    "RESULT ok=%d s429=%d s503=%d s504=%d sother=%d non2xx=%d sock_connect=%d sock_read=%d sock_write=%d sock_timeout=%d seconds=%.3f goodput=%.2f rps=%.2f p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
    t.s2xx, t.s429, t.s503, t.s504, t.sother, e.status, e.connect, e.read, e.write, e.timeout, secs,
    t.s2xx / secs, summary.requests / secs,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
