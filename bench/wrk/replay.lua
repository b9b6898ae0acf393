-- Replays requests prepared by bench/run.py, so that wrk sends exactly what the bench decided.
--
--   wrk ... -s bench/wrk/replay.lua URL -- PREFIX MODE
--
-- Thread i reads the file PREFIX.i; each line is one request:
--   METHOD <tab> PATH <tab> BEARER-TOKEN (may be empty) <tab> JSON BODY (may be empty)
-- MODE "once":  each line is sent once (a payment with its own transKey and one-time code); a
--               thread that runs out of lines stops.
-- MODE "cycle": the lines are loaded at start and sent round and round (reads).
-- done() prints one line "WRK_JSON {...}" with the counts and latency quantiles (microseconds).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function build(line)
  local method, path, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
  if method == nil then
    error("malformed request line: " .. line)
  end
  local headers = {}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  if body == "" then
    body = nil
  else
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, path, headers, body)
end

function init(args)
  local prefix, mode = args[1], args[2]
  sent = 0
  exhausted = 0
  once = (mode == "once")
  local name = prefix .. "." .. id
  if once then
    source = assert(io.open(name, "r"))
    -- What a thread sends after its last line, while wrk stops it: a read that changes nothing.
    idle = wrk.format("GET", "/healthz")
  else
    prepared = {}
    for line in io.lines(name) do
      table.insert(prepared, build(line))
    end
    assert(#prepared > 0, "no requests in " .. name)
    position = 0
  end
end

function request()
  if once then
    local line = source:read("*l")
    if line == nil then
      if exhausted == 0 then
        exhausted = 1
        wrk.thread:stop()
      end
      return idle
    end
    sent = sent + 1
    return build(line)
  end
  position = position % #prepared + 1
  sent = sent + 1
  return prepared[position]
end

function done(summary, latency, requests)
  local total_sent, total_exhausted = 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
    total_exhausted = total_exhausted + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"sent":%d,"threads_exhausted":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, total_sent, total_exhausted,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
