-- Shared test helpers: loads the mod's pure modules, a JSON decoder, a fake
-- socket, a fake WebSocket connection and (fake_core.lua) a fake engine.
package.path = "./spec/?.lua;" .. package.path

local H = {}

H.MOD = "voyager/"

function H.load(name)
	return dofile(H.MOD .. name .. ".lua")
end

local dkjson = require("dkjson")

H.bitops = H.load("bitops")
H.ops = H.bitops.new(nil) -- pure Lua: what plain Lua 5.1 gets
H.sha1lib = dofile("spec/sha1.lua") -- the engine has core.sha1 and core.encode_base64; plain Lua has not
H.sha1 = H.sha1lib.new(H.ops)
H.json = H.load("json")
H.wsmod = H.load("ws")
H.ws = H.wsmod.new({ops = H.ops, sha1 = H.sha1, base64 = H.sha1lib.base64})
H.client_lib = H.load("client")
H.httpmod = H.load("http")
H.startup = H.load("startup")
H.chat = H.load("chat")

--- Decodes like core.parse_json: JSON null -> nil, errors raise.
function H.decode(text)
	local v, _, err = dkjson.decode(text, 1, nil)
	if err then error(err) end
	return v
end

H.codec = {encode = H.json.encode, decode = H.decode}

--- Deterministic bytes: 1, 2, 3, ...
function H.counter_bytes()
	local n = 0
	return function(count)
		local t = {}
		for i = 1, count do
			n = (n + 1) % 256
			t[i] = string.char(n)
		end
		return table.concat(t)
	end
end

--- A server frame (unmasked).
function H.server_frame(opcode, payload, fin)
	return H.ws.encode_frame(opcode, payload or "", nil, fin)
end

--- Unmasks a client frame: returns opcode, payload, fin, masked.
function H.read_client_frame(bytes)
	local d = H.ws.new_decoder()
	-- The decoder refuses masked frames, so unmask by hand.
	local b1, b2 = bytes:byte(1, 2)
	local len, pos = b2 % 128, 3
	if len == 126 then
		len, pos = bytes:byte(3) * 256 + bytes:byte(4), 5
	elseif len == 127 then
		len = 0
		for i = 3, 10 do len = len * 256 + bytes:byte(i) end
		pos = 11
	end
	local masked = b2 >= 128
	local payload
	if masked then
		payload = H.ws.mask(bytes:sub(pos + 4, pos + 3 + len), bytes:sub(pos, pos + 3))
		pos = pos + 4
	else
		payload = bytes:sub(pos, pos - 1 + len)
	end
	local _ = d
	return b1 % 16, payload, b1 >= 128, masked, bytes:sub(pos + len)
end

--- A fake socket.core: one scripted TCP peer per tcp().
-- peer.inbox: strings the server "sends" (read by receive, any split);
-- peer.sent: what the client wrote; connect_results: sequence of
-- {res, err} for each connect() call; select_writable: bool.
function H.fake_socket()
	local S = {peers = {}}
	function S.tcp()
		local peer = {inbox = {}, sent = {}, closed = false, connect_results = S.next_connect or {{1}},
			calls = 0, writable = true, send_limit = nil, remote_closed = false}
		S.peers[#S.peers + 1] = peer
		local sock = {}
		function sock.settimeout() end
		function sock.setoption() return 1 end
		function sock.connect(_, host, port)
			peer.host, peer.port = host, port
			peer.calls = peer.calls + 1
			local r = peer.connect_results[math.min(peer.calls, #peer.connect_results)]
			return r[1], r[2]
		end
		function sock.send(_, data, i)
			i = i or 1
			local chunk = data:sub(i)
			if peer.send_limit then chunk = chunk:sub(1, peer.send_limit) end
			peer.sent[#peer.sent + 1] = chunk
			local last = i + #chunk - 1
			if last < #data then return nil, "timeout", last end
			return last
		end
		function sock.receive(_, n)
			local data = table.remove(peer.inbox, 1)
			if data then
				if #data > n then
					table.insert(peer.inbox, 1, data:sub(n + 1))
					data = data:sub(1, n)
				end
				return nil, "timeout", data -- non-blocking partial read
			end
			if peer.remote_closed then return nil, "closed", "" end
			return nil, "timeout", ""
		end
		function sock.close() peer.closed = true end
		peer.sock = sock
		return sock
	end
	function S.select(_, w)
		local peer = S.peers[#S.peers]
		if peer and peer.writable then return {}, w end
		return {}, {}
	end
	function S.last() return S.peers[#S.peers] end
	return S
end

--- Everything the fake peer received, joined.
function H.sent_bytes(peer)
	return table.concat(peer.sent)
end

--- Splits a byte string of client frames into {opcode, payload} list.
function H.client_frames(bytes)
	local out = {}
	while #bytes > 0 do
		local op, payload, fin, masked, rest = H.read_client_frame(bytes)
		out[#out + 1] = {op = op, payload = payload, fin = fin, masked = masked}
		bytes = rest
	end
	return out
end

--- A fake ws connection for client specs: push events, read sent frames.
function H.fake_conn()
	local c = {state = "connecting", events = {}, sent = {}, closed = nil}
	function c.poll()
		local ev = c.events
		c.events = {}
		for _, e in ipairs(ev) do
			if e.type == "open" then c.state = "open" elseif e.type == "close" then c.state = "closed" end
		end
		return ev
	end
	function c.send_text(_, text)
		if c.state ~= "open" then return nil, "not open" end
		c.sent[#c.sent + 1] = H.decode(text)
		c.sent[#c.sent].raw = text
		return true
	end
	function c.close(_, code, reason)
		c.closed = {code = code, reason = reason}
		c.state = "closed"
	end
	function c.push(ev) c.events[#c.events + 1] = ev end
	function c.server(msg) c.push({type = "message", data = H.json.encode(msg)}) end
	function c.last_sent() return c.sent[#c.sent] end
	function c.sent_of(kind)
		local out = {}
		for _, f in ipairs(c.sent) do if f.type == kind then out[#out + 1] = f end end
		return out
	end
	return c
end

--- A client with a fake clock and scripted connections.
function H.make_client(settings)
	local env = {t = 0, conns = {}, events = {}, logs = {}, rand = 0.5, open_fails = false}
	env.client = H.client_lib.new({
		open = function()
			if env.open_fails then return nil, "refused" end
			local c = H.fake_conn()
			env.conns[#env.conns + 1] = c
			return c
		end,
		json = H.codec,
		now = function() return env.t end,
		random = function() return env.rand end,
		log = function(level, msg) env.logs[#env.logs + 1] = {level = level, msg = msg} end,
		on_event = function(ev) env.events[#env.events + 1] = ev end,
		settings = settings or {},
		server_name = "testserver", mod_version = "0.1.0",
	})
	function env.conn() return env.conns[#env.conns] end
	--- Steps until connected and welcomed.
	function env.connect(personas)
		env.client.step()
		local c = env.conn()
		c.push({type = "open"})
		env.client.step()
		c.server({type = "welcome", protocol = 1, personas = personas or {"guide"}})
		env.client.step()
		return c
	end
	function env.advance(dt)
		env.t = env.t + dt
		env.client.step()
	end
	function env.events_of(kind)
		local out = {}
		for _, e in ipairs(env.events) do if e.type == kind then out[#out + 1] = e end end
		return out
	end
	function env.logged(pattern)
		for _, l in ipairs(env.logs) do if l.msg:find(pattern) then return l end end
	end
	return env
end

--- A fake of the engine's HTTP API (fetch_async / fetch_async_get): requests
-- wait until a spec answers them (answer, fail), as the engine's do.
function H.fake_http()
	local api = {requests = {}, next_handle = 0}
	function api.fetch_async(req)
		api.next_handle = api.next_handle + 1
		req.handle = api.next_handle
		req.result = {completed = false}
		api.requests[#api.requests + 1] = req
		return req.handle
	end
	function api.fetch_async_get(handle)
		for _, req in ipairs(api.requests) do
			if req.handle == handle then return req.result end
		end
		return {completed = false}
	end
	--- The requests not answered yet, of one kind ("session", "frames", "poll", "end").
	function api.open_requests(kind)
		local out = {}
		for _, req in ipairs(api.requests) do
			local k = req.url:match("/http/luanti/(%a+)/")
			if k == "session" and req.method == "DELETE" then k = "end" end
			if not req.result.completed and (kind == nil or k == kind) then out[#out + 1] = req end
		end
		return out
	end
	function api.answer(req, code, body)
		req.result = {completed = true, succeeded = true, timeout = false, code = code,
			data = type(body) == "table" and H.json.encode(body) or (body or "")}
	end
	function api.fail(req, timeout)
		req.result = {completed = true, succeeded = false, timeout = timeout or false, code = 0, data = ""}
	end
	return api
end

--- Handlers that record what happens to one request.
function H.recorder()
	local r = {deltas = {}, replies = {}, errors = {}, done = {}}
	r.handlers = {
		delta = function(t) r.deltas[#r.deltas + 1] = t end,
		reply = function(m) r.replies[#r.replies + 1] = m end,
		error = function(code, msg) r.errors[#r.errors + 1] = {code = code, message = msg} end,
		done = function(m) r.done[#r.done + 1] = m end,
	}
	return r
end

return H
