local H = require("helpers")

local URL = "https://voyager.example.org/http/luanti/"

local function header(req, name)
	for _, h in ipairs(req.extra_headers or {}) do
		local n, v = h:match("^([^:]+):%s*(.*)$")
		if n and n:lower() == name:lower() then return v end
	end
end

-- The real client over the HTTP transport, on a fake HTTP API and a fake clock.
local function make(settings)
	local env = {t = 0, logs = {}, events = {}}
	env.api = H.fake_http()
	local lib = H.httpmod.new({http = env.api, decode = H.decode, now = function() return env.t end})
	env.client = H.client_lib.new({
		open = function() return lib.connect({url = URL, token = "vgs_secret", connect_timeout = 5,
			user_agent = "luanti-voyager-mod/test"}) end,
		json = H.codec,
		now = function() return env.t end,
		random = function() return 0.5 end,
		log = function(level, msg) env.logs[#env.logs + 1] = {level = level, msg = msg} end,
		on_event = function(ev) env.events[#env.events + 1] = ev end,
		settings = settings or {fallback_after = 3},
		server_name = "testserver", mod_version = "0.1.0",
	})
	function env.step(dt)
		env.t = env.t + (dt or 0.05)
		env.client.step()
	end
	function env.one(kind)
		local open = env.api.open_requests(kind)
		assert.equal(1, #open, "open " .. kind .. " requests")
		return open[1]
	end
	--- The frames posted so far, decoded, in order.
	function env.posted()
		local out = {}
		for _, req in ipairs(env.api.requests) do
			if req.url:match("/frames/$") then
				for line in req.data:gmatch("[^\n]+") do out[#out + 1] = H.decode(line) end
			end
		end
		return out
	end
	--- Opens the session and answers the hello: the client is ready.
	function env.ready()
		env.step()
		env.api.answer(env.one("session"), 201, {session = "sess-1", poll_seconds = 25})
		env.step() -- open: the poll starts, hello is sent
		env.step() -- what was sent in a step is posted at the next
		env.api.answer(env.one("frames"), 202, {frames = 1})
		env.api.answer(env.one("poll"), 200, {seq = 1, frames = {{type = "welcome", protocol = 1,
			personas = {"guide"}}}})
		env.step()
		assert.is_true(env.client.is_ready())
	end
	function env.logged(pattern, level)
		for _, l in ipairs(env.logs) do
			if l.msg:find(pattern) and (level == nil or l.level == level) then return l end
		end
	end
	return env
end

describe("the HTTP binding's base URL", function()
	it("keeps http(s) URLs and maps the WebSocket's", function()
		assert.equal(URL, H.httpmod.base_url(URL))
		assert.equal("http://127.0.0.1:8000/http/luanti/", H.httpmod.base_url("ws://127.0.0.1:8000/ws/luanti/"))
		assert.equal("https://h.example/http/luanti/", H.httpmod.base_url("wss://h.example/ws/luanti"))
		assert.equal("https://h.example/http/luanti/", H.httpmod.base_url("https://h.example"))
		assert.equal("https://h.example/voyager/", H.httpmod.base_url("https://h.example/voyager"))
	end)

	it("refuses what is not a URL it can use", function()
		assert.is_nil(H.httpmod.base_url("ftp://h.example/"))
		assert.is_nil(H.httpmod.base_url("not a url"))
	end)
end)

describe("the HTTP transport", function()
	it("opens a session with the token, then posts hello and holds a poll", function()
		local env = make()
		env.step()
		local open = env.one("session")
		assert.equal("POST", open.method)
		assert.equal(URL .. "session/", open.url)
		assert.equal("Bearer vgs_secret", header(open, "Authorization"))
		assert.equal("luanti-voyager-mod/test", open.user_agent)
		env.api.answer(open, 201, {session = "sess-1", poll_seconds = 25})
		env.step()
		env.step()
		local frames = env.one("frames")
		assert.equal("sess-1", header(frames, "X-Voyager-Session"))
		assert.equal("hello", H.decode(frames.data).type)
		local poll = env.one("poll")
		assert.equal("GET", poll.method)
		assert.equal(URL .. "poll/?after=0", poll.url)
		assert.equal("sess-1", header(poll, "X-Voyager-Session"))
		assert.is_true(poll.timeout > 25) -- longer than the gateway holds it
	end)

	it("streams an ask's deltas over several polls, acknowledging each", function()
		local env = make()
		env.ready()
		local r = H.recorder()
		local id = env.client.ask({npc = "n1", persona = "guide", player = "alice", text = "hi"}, r.handlers)
		env.step()
		env.api.answer(env.one("frames"), 202, {frames = 1})
		assert.same({type = "ask", id = id, npc = "n1", persona = "guide", player = "alice", text = "hi"},
			env.posted()[2])
		local poll = env.one("poll")
		assert.equal(URL .. "poll/?after=1", poll.url)
		env.api.answer(poll, 200, {seq = 2, frames = {{type = "delta", id = id, text = "Hel"}}})
		env.step()
		assert.same({"Hel"}, r.deltas)
		poll = env.one("poll")
		assert.equal(URL .. "poll/?after=2", poll.url) -- the next poll starts at once
		env.api.answer(poll, 200, {seq = 4, frames = {{type = "delta", id = id, text = "lo"},
			{type = "reply", id = id, exchange = "ex-1", text = "Hello", actions = {}, blocked = {}}}})
		env.step()
		assert.same({"Hel", "lo"}, r.deltas)
		assert.equal("ex-1", r.replies[1].exchange)
		assert.equal(URL .. "poll/?after=4", env.one("poll").url)
	end)

	it("posts the frames of one step together, and one request at a time", function()
		local env = make()
		env.ready()
		env.client.rate({exchange = "ex-1", player = "alice", score = 1}, H.recorder().handlers)
		env.client.link({player = "alice", code = "ABCD1234"}, H.recorder().handlers)
		env.step()
		local post = env.one("frames")
		assert.equal(2, select(2, post.data:gsub("\n", "")) + 1)
		env.client.rate({exchange = "ex-2", player = "alice", score = -1}, H.recorder().handlers)
		env.step()
		assert.equal(1, #env.api.open_requests("frames")) -- waits for the first
		env.api.answer(post, 202, {frames = 2})
		env.step()
		assert.equal("ex-2", H.decode(env.one("frames").data).exchange)
	end)

	it("an empty poll is polled again", function()
		local env = make()
		env.ready()
		env.api.answer(env.one("poll"), 200, {seq = 1, frames = {}})
		env.step()
		assert.equal(URL .. "poll/?after=1", env.one("poll").url)
		assert.is_true(env.client.is_ready())
	end)

	it("a refused token backs off for long and says so", function()
		local env = make({reconnect_max = 60})
		env.step()
		env.api.answer(env.one("session"), 401, {close = 4401, message = "token: bad"})
		env.step()
		assert.equal(1, #env.api.requests)
		assert.truthy(env.logged("token refused", "error"))
		local auth = {}
		for _, e in ipairs(env.events) do if e.type == "auth_refused" then auth[#auth + 1] = e end end
		assert.equal(401, auth[1].status)
		assert.is_true(env.client.status().next_attempt_in >= 29)
	end)

	it("backs off after failures, doubling, and logs a reason at warning once per change", function()
		local env = make({reconnect_max = 60, backoff_base = 1, fallback_after = 3})
		local opened = 0
		local waits = {}
		for _ = 1, 4 do
			env.step()
			env.api.fail(env.one("session"))
			opened = opened + 1
			env.step()
			waits[#waits + 1] = env.client.status().next_attempt_in
			env.step(waits[#waits] + 0.01)
		end
		assert.equal(4, opened)
		assert.is_true(waits[2] > waits[1] and waits[3] > waits[2])
		local warnings = 0
		for _, l in ipairs(env.logs) do
			if l.msg:find("cannot connect") and l.level == "warning" then warnings = warnings + 1 end
		end
		assert.equal(1, warnings) -- the same reason each time: once at warning, then at info
		assert.truthy(env.logged("connection refused"))
	end)

	it("keeps asks in the queue while offline and sends them once ready", function()
		local env = make({fallback_after = 30, queue_size = 4})
		local r = H.recorder()
		env.client.ask({npc = "n1", persona = "guide", player = "alice", text = "queued"}, r.handlers)
		env.ready()
		env.step()
		env.api.answer(env.one("frames"), 202, {frames = 1})
		local posted = env.posted()
		assert.equal("ask", posted[#posted].type)
		assert.equal("queued", posted[#posted].text)
		assert.same({}, r.errors)
	end)

	it("a poll that fails loses the session: asks in flight fail, it reconnects and says hello again", function()
		local env = make({fallback_after = 3})
		env.ready()
		local r = H.recorder()
		env.client.ask({npc = "n1", persona = "guide", player = "alice", text = "hi"}, r.handlers)
		env.step()
		env.api.answer(env.one("frames"), 202, {frames = 1})
		env.api.fail(env.one("poll"))
		env.step()
		assert.equal("unavailable", r.errors[1].code)
		assert.is_false(env.client.is_ready())
		env.step(2)
		env.api.answer(env.one("session"), 201, {session = "sess-2", poll_seconds = 25})
		env.step()
		env.step()
		local hello = env.one("frames")
		assert.equal("sess-2", header(hello, "X-Voyager-Session"))
		assert.equal("hello", H.decode(hello.data).type)
	end)

	it("a session the gateway ended (410) is opened anew", function()
		local env = make()
		env.ready()
		env.api.answer(env.one("poll"), 410, {close = 4410, message = "session: unknown"})
		env.step()
		assert.is_false(env.client.is_ready())
		assert.truthy(env.logged("HTTP 410", "warning"))
		env.step(2)
		assert.equal(1, #env.api.open_requests("session"))
	end)

	it("ends its session on shutdown", function()
		local env = make()
		env.ready()
		env.client.shutdown()
		local bye = env.one("end")
		assert.equal("DELETE", bye.method)
		assert.equal("sess-1", header(bye, "X-Voyager-Session"))
	end)

	it("falls back after the window while the platform cannot be reached", function()
		local env = make({fallback_after = 3})
		env.step()
		env.api.fail(env.one("session"))
		env.step(3.1)
		assert.is_true(env.client.in_fallback())
	end)
end)

describe("the client with no transport", function()
	it("falls back at once", function()
		local events = {}
		local client = H.client_lib.new({open = nil, json = H.codec, now = function() return 0 end,
			on_event = function(ev) events[#events + 1] = ev end})
		client.step()
		assert.is_true(client.in_fallback())
		assert.equal("fallback", events[1].type)
		local r = H.recorder()
		client.ask({npc = "n1", persona = "guide", player = "alice", text = "hi"}, r.handlers)
		assert.equal("unavailable", r.errors[1].code)
	end)
end)
