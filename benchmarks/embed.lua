-- wrk script: single-text OpenAI embedding requests (each a different text), counting non-2xx answers.
-- wrk -t2 -c64 -d15s -s benchmarks/embed.lua http://127.0.0.1:3000/v1/embeddings
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"model":"embedder","input":"query number ' .. n .. ' about python files"}')
end
local errors = 0
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d goodput=%.1f/s p50_us=%d p99_us=%d\n", summary.errors.status,
    (summary.requests - summary.errors.status) / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99)))
end
