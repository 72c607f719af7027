-- wrk script: POST unique roles to /core4/api/v1/roles until each thread has its share.
-- Arguments (after `--`): roles per thread, a prefix unique to this run.
-- Role names are <prefix>t<thread>n<n>; realnames two random words; one permission each.
local threads = {}

function setup(thread)
    thread:set("tid", #threads + 1)
    table.insert(threads, thread)
end

function init(args)
    quota = tonumber(args[1])
    prefix = args[2]
    sent, done, failed = 0, 0, 0
    math.randomseed(tid * 7919 + os.time())
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
end

local function word()
    local t = {}
    for i = 1, math.random(4, 9) do
        t[i] = string.char(math.random(97, 122))
    end
    return table.concat(t)
end

function request()
    sent = sent + 1
    local body = string.format(
        '{"name":"%st%dn%d","realname":"%s %s","perm":["app://bench/%s"]}',
        prefix, tid, sent, word(), word(), word())
    return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
    done = done + 1
    if status ~= 200 then
        failed = failed + 1
        if failed <= 3 then io.stderr:write("seed: HTTP " .. status .. " " .. body .. "\n") end
    end
    if done >= quota then
        wrk.thread:stop()
    end
end
