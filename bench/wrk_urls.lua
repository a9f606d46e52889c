-- wrk script: GET every path listed in a file (one per line, e.g. /cache/main/<hash>.narinfo),
-- in turn, each thread starting at another place in the list. Requests are formatted once, in
-- init, so that the load generator spends its time on the network and not in Lua.
--
--   wrk ... -s bench/wrk_urls.lua URL -- PATHS_FILE

local threads = 0

function setup(thread)
    thread:set("index", threads)
    threads = threads + 1
end

local requests = {}
local next_one = 1

function init(args)
    for path in io.lines(args[1]) do
        requests[#requests + 1] = wrk.format("GET", path)
    end
    if #requests == 0 then
        error("no paths in " .. tostring(args[1]))
    end
    -- Spread the threads over the list.
    next_one = ((index or 0) * 7919) % #requests + 1
end

function request()
    local r = requests[next_one]
    next_one = next_one % #requests + 1
    return r
end
