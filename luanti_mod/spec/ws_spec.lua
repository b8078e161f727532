local H = require("helpers")
local ws, OP = H.ws, H.wsmod.OP

describe("ws.parse_url", function()
	it("parses host, port and path", function()
		assert.same({host = "127.0.0.1", port = 8000, path = "/ws/luanti/"},
			ws.parse_url("ws://127.0.0.1:8000/ws/luanti/"))
		assert.same({host = "example.org", port = 80, path = "/"}, ws.parse_url("ws://example.org"))
		assert.same({host = "::1", port = 9000, path = "/x?y=1"}, ws.parse_url("ws://[::1]:9000/x?y=1"))
	end)
	it("refuses other schemes, wss and bad ports", function()
		assert.is_nil(ws.parse_url("http://a/"))
		local u, err = ws.parse_url("wss://a/")
		assert.is_nil(u)
		assert.matches("TLS", err)
		assert.is_nil(ws.parse_url("ws://a:0/"))
		assert.is_nil(ws.parse_url("ws://a:70000/"))
		assert.is_nil(ws.parse_url(nil))
	end)
end)

describe("handshake", function()
	it("computes the RFC 6455 sample accept value", function()
		assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", ws.accept_for("dGhlIHNhbXBsZSBub25jZQ=="))
	end)

	it("builds a request with a random key and the bearer token", function()
		local key = ws.make_key(H.counter_bytes())
		assert.equal(24, #key)
		local req = ws.handshake_request(ws.parse_url("ws://h:8000/ws/luanti/"), key, "s3cret")
		assert.matches("^GET /ws/luanti/ HTTP/1.1\r\n", req)
		assert.matches("\r\nHost: h:8000\r\n", req)
		assert.matches("\r\nUpgrade: websocket\r\n", req)
		assert.matches("\r\nSec%-WebSocket%-Key: " .. key:gsub("%p", "%%%0") .. "\r\n", req)
		assert.matches("\r\nSec%-WebSocket%-Version: 13\r\n", req)
		assert.matches("\r\nAuthorization: Bearer s3cret\r\n", req)
		assert.matches("\r\n\r\n$", req)
		assert.not_matches("Authorization", ws.handshake_request(ws.parse_url("ws://h/"), key, ""))
	end)

	local function answer(accept, status)
		return (status or "HTTP/1.1 101 Switching Protocols") .. "\r\nUpgrade: websocket\r\n"
			.. "Connection: Upgrade\r\nSec-WebSocket-Accept: " .. accept .. "\r\n\r\n"
	end

	it("accepts a good answer and keeps the bytes after it", function()
		local key = "dGhlIHNhbXBsZSBub25jZQ=="
		local ok, res = ws.check_handshake(answer("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") .. "\129\0", key)
		assert.is_true(ok)
		assert.equal("\129\0", res.rest)
	end)

	it("waits for an incomplete answer", function()
		assert.is_nil(ws.check_handshake("HTTP/1.1 101 Switching", "k"))
	end)

	it("refuses a bad accept value", function()
		local ok, res = ws.check_handshake(answer("AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "dGhlIHNhbXBsZSBub25jZQ==")
		assert.is_false(ok)
		assert.matches("Sec%-WebSocket%-Accept", res.error)
	end)

	it("reports a refused handshake with its HTTP status", function()
		local ok, res = ws.check_handshake("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "k")
		assert.is_false(ok)
		assert.equal(403, res.status)
	end)
end)

describe("frame encoding", function()
	it("masks client frames", function()
		local bytes = ws.encode_frame(OP.TEXT, "Hello", "\55\250\33\61")
		-- RFC 6455 5.7: masked "Hello"
		assert.equal("\129\133\55\250\33\61\127\159\77\81\88", bytes)
	end)

	it("uses 16-bit and 64-bit lengths", function()
		local mid = ws.encode_frame(OP.TEXT, string.rep("x", 300), "\1\2\3\4")
		assert.equal(126 + 128, mid:byte(2))
		assert.equal(300, mid:byte(3) * 256 + mid:byte(4))
		local big = ws.encode_frame(OP.BINARY, string.rep("y", 70000))
		assert.equal(127, big:byte(2))
		local op, payload = H.read_client_frame(big)
		assert.equal(OP.BINARY, op)
		assert.equal(70000, #payload)
	end)
end)

describe("frame decoding", function()
	local function decode_all(bytes, max)
		local d = ws.new_decoder(max)
		d:feed(bytes)
		local out = {}
		while true do
			local m, code, why = d:next()
			if m == nil then break end
			if m == false then out[#out + 1] = {error = code, why = why}; break end
			out[#out + 1] = m
		end
		return out
	end

	it("decodes a text frame", function()
		local out = decode_all(H.server_frame(OP.TEXT, "hi"))
		assert.same({{opcode = OP.TEXT, data = "hi"}}, out)
	end)

	it("decodes 16-bit and 64-bit lengths", function()
		local a, b = string.rep("a", 200), string.rep("b", 70000)
		local out = decode_all(H.server_frame(OP.TEXT, a) .. H.server_frame(OP.TEXT, b))
		assert.equal(a, out[1].data)
		assert.equal(b, out[2].data)
	end)

	it("joins fragmented messages, with a ping between the fragments", function()
		local bytes = H.server_frame(OP.TEXT, "Hel", false) .. H.server_frame(OP.CONT, "lo ", false)
			.. H.server_frame(OP.PING, "p") .. H.server_frame(OP.CONT, "world", true)
		local out = decode_all(bytes)
		assert.same({opcode = OP.PING, data = "p"}, out[1])
		assert.same({opcode = OP.TEXT, data = "Hello world"}, out[2])
	end)

	it("buffers partial reads byte by byte", function()
		local msg = string.rep("z", 300)
		local bytes = H.server_frame(OP.TEXT, "one") .. H.server_frame(OP.TEXT, msg, false)
			.. H.server_frame(OP.CONT, "!", true)
		local d = ws.new_decoder()
		local got = {}
		for i = 1, #bytes do
			d:feed(bytes:sub(i, i))
			local m = d:next()
			while m do
				got[#got + 1] = m.data
				m = d:next()
			end
		end
		assert.same({"one", msg .. "!"}, got)
	end)

	it("decodes a close frame with its code and reason", function()
		local out = decode_all(H.server_frame(OP.CLOSE, "\17\49token refused")) -- 4401
		assert.equal(4401, out[1].code)
		assert.equal("token refused", out[1].reason)
		assert.equal(1005, decode_all(H.server_frame(OP.CLOSE, ""))[1].code)
	end)

	it("refuses protocol violations", function()
		assert.equal(1002, decode_all(ws.encode_frame(OP.TEXT, "x", "\1\2\3\4"))[1].error) -- masked
		assert.equal(1002, decode_all(H.server_frame(OP.CONT, "x"))[1].error)
		assert.equal(1002, decode_all(H.server_frame(OP.PING, string.rep("p", 126)))[1].error)
		assert.equal(1002, decode_all(H.server_frame(OP.PING, "p", false))[1].error)
		assert.equal(1002, decode_all("\193\0")[1].error) -- RSV1
		assert.equal(1002, decode_all(H.server_frame(3, "x"))[1].error)
		assert.equal(1002, decode_all(H.server_frame(OP.TEXT, "a", false) .. H.server_frame(OP.TEXT, "b"))[1].error)
		assert.equal(1009, decode_all(H.server_frame(OP.TEXT, string.rep("x", 100)), 50)[1].error)
	end)
end)

describe("connection over a socket", function()
	local S, conn, t, key

	local function open_conn(opts)
		S = H.fake_socket()
		t = 0
		local rb = H.counter_bytes()
		key = H.sha1lib.base64(string.char(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16))
		opts = opts or {}
		if opts.connect_results then S.next_connect = opts.connect_results end
		conn = assert(ws.connect({url = "ws://127.0.0.1:8000/ws/luanti/", token = "tok", socket = S,
			now = function() return t end, random_bytes = rb, connect_timeout = 5}))
	end

	local function handshake_ok(extra)
		local peer = S.last()
		peer.inbox[#peer.inbox + 1] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			.. "Connection: Upgrade\r\nSec-WebSocket-Accept: " .. ws.accept_for(key) .. "\r\n\r\n" .. (extra or "")
	end

	local function frames_sent(peer)
		local bytes = H.sent_bytes(peer)
		local head_end = bytes:find("\r\n\r\n", 1, true)
		return H.client_frames(bytes:sub(head_end + 4)), bytes:sub(1, head_end + 3)
	end

	it("connects without blocking, shakes hands and opens", function()
		open_conn({connect_results = {{nil, "timeout"}, {nil, "already connected"}}})
		assert.same({}, conn:poll())
		assert.equal("connecting", conn.state)
		local evs = conn:poll()
		assert.equal("handshake", conn.state)
		assert.same({}, evs)
		local _, request = frames_sent(S.last())
		assert.matches("Authorization: Bearer tok", request)
		assert.matches("Sec%-WebSocket%-Key: " .. key:gsub("%p", "%%%0"), request)
		handshake_ok(H.server_frame(OP.TEXT, '{"type":"welcome"}'))
		evs = conn:poll()
		assert.same({{type = "open"}, {type = "message", data = '{"type":"welcome"}'}}, evs)
	end)

	it("reports a refused connection", function()
		open_conn({connect_results = {{nil, "connection refused"}}})
		local evs = conn:poll()
		assert.equal("close", evs[1].type)
		assert.matches("refused", evs[1].error)
		assert.equal("closed", conn.state)
	end)

	it("times out a connection that never completes", function()
		open_conn({connect_results = {{nil, "timeout"}}})
		conn:poll()
		S.last().writable = false
		conn:poll()
		assert.equal("connecting", conn.state)
		t = 6
		local evs = conn:poll()
		assert.matches("timed out", evs[1].error)
	end)

	it("reports an HTTP refusal with its status", function()
		open_conn()
		conn:poll()
		S.last().inbox[1] = "HTTP/1.1 403 Forbidden\r\n\r\n"
		local evs = conn:poll()
		assert.equal(403, evs[1].status)
		assert.is_true(S.last().closed)
	end)

	it("refuses a bad accept value", function()
		open_conn()
		conn:poll()
		S.last().inbox[1] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
			.. "Connection: Upgrade\r\nSec-WebSocket-Accept: bad=\r\n\r\n"
		local evs = conn:poll()
		assert.equal("close", evs[1].type)
		assert.matches("Accept", evs[1].error)
	end)

	it("sends masked text frames and answers pings with pongs", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		assert.is_true(conn:send_text('{"type":"hello"}'))
		S.last().inbox[1] = H.server_frame(OP.PING, "are-you-there")
		assert.same({}, conn:poll())
		local frames = frames_sent(S.last())
		assert.same({op = OP.TEXT, payload = '{"type":"hello"}', fin = true, masked = true}, frames[1])
		assert.same({op = OP.PONG, payload = "are-you-there", fin = true, masked = true}, frames[2])
	end)

	it("reads messages split across polls", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		local bytes = H.server_frame(OP.TEXT, string.rep("m", 1000))
		local got = {}
		for i = 1, #bytes, 7 do
			S.last().inbox[1] = bytes:sub(i, i + 6)
			for _, ev in ipairs(conn:poll()) do got[#got + 1] = ev end
		end
		assert.equal(1, #got)
		assert.equal(1000, #got[1].data)
	end)

	it("keeps unsent bytes when the socket is full", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		local peer = S.last()
		peer.send_limit = 10
		conn:send_text(string.rep("s", 100))
		for _ = 1, 20 do conn:poll() end
		local frames = frames_sent(peer)
		assert.equal(string.rep("s", 100), frames[1].payload)
		assert.equal(0, conn:buffered_out())
	end)

	it("echoes the server's close and reports its code", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		S.last().inbox[1] = H.server_frame(OP.CLOSE, "\17\49bad token")
		local evs = conn:poll()
		assert.same({type = "close", code = 4401, reason = "bad token", clean = true}, evs[1])
		local frames = frames_sent(S.last())
		assert.equal(OP.CLOSE, frames[#frames].op)
		assert.equal("\17\49", frames[#frames].payload)
		assert.is_true(S.last().closed)
	end)

	it("closes cleanly: sends a close frame and waits for the answer", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		conn:close(1000, "bye")
		assert.equal("closing", conn.state)
		local frames = frames_sent(S.last())
		assert.equal("\3\232bye", frames[#frames].payload)
		S.last().inbox[1] = H.server_frame(OP.CLOSE, "\3\232")
		local evs = conn:poll()
		assert.equal(1000, evs[1].code)
		assert.equal("closed", conn.state)
	end)

	it("reports a lost connection", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		S.last().remote_closed = true
		local evs = conn:poll()
		assert.equal(1006, evs[1].code)
	end)

	it("closes with 1002 on a protocol error", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		S.last().inbox[1] = H.server_frame(OP.CONT, "x")
		local evs = conn:poll()
		assert.equal(1002, evs[1].code)
		local frames = frames_sent(S.last())
		assert.equal(OP.CLOSE, frames[#frames].op)
	end)

	it("never raises: a socket that throws becomes a close event", function()
		open_conn()
		conn:poll()
		handshake_ok()
		conn:poll()
		S.last().sock.receive = function() error("boom") end
		local evs = conn:poll()
		assert.equal("close", evs[1].type)
		assert.matches("boom", evs[1].error)
	end)
end)
