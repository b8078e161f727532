-- A small WebSocket client (RFC 6455) over LuaSocket's `socket.core`.
-- Client side only, text messages, no extensions, no TLS. Everything is
-- non-blocking: the owner calls conn:poll() from a globalstep and gets a list
-- of events back ({type = "open" | "message" | "pong" | "close", ...}).

local M = {}

local byte, char, floor, concat = string.byte, string.char, math.floor, table.concat
local unpack = unpack or table.unpack -- luacheck: ignore 143

M.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
M.OP = {CONT = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10}
local OP = M.OP

--- Parses ws://host[:port][/path]. Returns {host, port, path} or nil, err.
function M.parse_url(url)
	if type(url) ~= "string" then return nil, "no URL" end
	local scheme, rest = url:match("^(%a+)://(.+)$")
	if not scheme then return nil, "not a URL: " .. url end
	scheme = scheme:lower()
	if scheme == "wss" then
		return nil, "wss:// (TLS) is not supported by the mod; use ws:// to a gateway on a trusted network"
	elseif scheme ~= "ws" then
		return nil, "unsupported scheme " .. scheme .. ":// (expected ws://)"
	end
	local host, port, path
	if rest:sub(1, 1) == "[" then -- IPv6 literal
		host, port, path = rest:match("^%[([^%]]+)%]:?(%d*)(.*)$")
	else
		host, port, path = rest:match("^([^/:?#]+):?(%d*)(.*)$")
	end
	if not host or host == "" then return nil, "no host in URL " .. url end
	if path ~= "" and not path:match("^[/?]") then return nil, "bad URL " .. url end
	if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
	path = path:gsub("#.*$", "")
	port = tonumber(port ~= "" and port or "80")
	if not port or port < 1 or port > 65535 then return nil, "bad port in URL " .. url end
	return {host = host, port = port, path = path}
end

--- Binds the codec to bit operations and a SHA-1 implementation.
-- deps: {ops = bitops.new(...), sha1 = fn, base64 = fn}
function M.new(deps)
	local lib = {parse_url = M.parse_url, OP = OP, GUID = M.GUID}
	local bxor = deps.ops.bxor

	function lib.accept_for(key)
		return deps.base64(deps.sha1(key .. M.GUID))
	end

	function lib.make_key(random_bytes)
		return deps.base64(random_bytes(16))
	end

	function lib.handshake_request(u, key, token, extra_headers)
		local host = u.host:find(":", 1, true) and ("[" .. u.host .. "]") or u.host
		if u.port ~= 80 then host = host .. ":" .. u.port end
		local lines = {
			"GET " .. u.path .. " HTTP/1.1",
			"Host: " .. host,
			"Upgrade: websocket",
			"Connection: Upgrade",
			"Sec-WebSocket-Key: " .. key,
			"Sec-WebSocket-Version: 13",
		}
		if token and token ~= "" then
			lines[#lines + 1] = "Authorization: Bearer " .. token
		end
		for name, value in pairs(extra_headers or {}) do
			lines[#lines + 1] = name .. ": " .. value
		end
		return concat(lines, "\r\n") .. "\r\n\r\n"
	end

	--- Parses the server's handshake answer from `buf`.
	-- Returns nil while incomplete; otherwise ok, result where result is
	-- {status, headers, rest} on success or {status, error} on failure.
	function lib.check_handshake(buf, key)
		local head_end = buf:find("\r\n\r\n", 1, true)
		if not head_end then
			if #buf > 16384 then return false, {error = "handshake answer too long"} end
			return nil
		end
		local head, rest = buf:sub(1, head_end - 1), buf:sub(head_end + 4)
		local status_line = head:match("^([^\r\n]*)")
		local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
		if not status then return false, {error = "not an HTTP answer: " .. status_line:sub(1, 80)} end
		local headers = {}
		for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
			headers[name:lower()] = value
		end
		if status ~= 101 then
			return false, {status = status, headers = headers,
				error = "handshake refused: " .. status_line:sub(1, 80)}
		end
		if (headers["upgrade"] or ""):lower() ~= "websocket" then
			return false, {status = status, error = "handshake: missing Upgrade: websocket"}
		end
		if not (headers["connection"] or ""):lower():find("upgrade", 1, true) then
			return false, {status = status, error = "handshake: missing Connection: Upgrade"}
		end
		if headers["sec-websocket-accept"] ~= lib.accept_for(key) then
			return false, {status = status, error = "handshake: bad Sec-WebSocket-Accept"}
		end
		return true, {status = status, headers = headers, rest = rest}
	end

	local function mask(payload, mk)
		local k = {byte(mk, 1, 4)}
		local out = {}
		for i = 1, #payload do
			out[i] = char(bxor(byte(payload, i), k[(i - 1) % 4 + 1]))
		end
		return concat(out)
	end
	lib.mask = mask

	--- One frame. mask_key: 4 bytes (client frames must be masked) or nil.
	function lib.encode_frame(opcode, payload, mask_key, fin)
		payload = payload or ""
		local len = #payload
		local b1 = (fin == false and 0 or 0x80) + opcode
		local mbit = mask_key and 0x80 or 0
		local head
		if len < 126 then
			head = char(b1, mbit + len)
		elseif len < 65536 then
			head = char(b1, mbit + 126, floor(len / 256), len % 256)
		else
			local bytes, n = {}, len
			for i = 8, 1, -1 do bytes[i] = n % 256; n = floor(n / 256) end
			head = char(b1, mbit + 127) .. char(unpack(bytes))
		end
		if mask_key then
			return head .. mask_key .. mask(payload, mask_key)
		end
		return head .. payload
	end

	--- Incremental decoder: feed() bytes as they come, next() returns whole
	-- messages ({opcode, data} or, for close, {opcode, code, reason}),
	-- nil when more bytes are needed, or false, close_code, why on a
	-- protocol error.
	function lib.new_decoder(max_message)
		max_message = max_message or 1048576
		local d = {}
		local chunks, buf = {}, ""
		local frag_op, frag_parts, frag_len = nil, {}, 0

		function d.feed(_, data)
			if data and data ~= "" then chunks[#chunks + 1] = data end
		end

		function d.buffered()
			return #buf
		end

		function d.next()
			if #chunks > 0 then
				buf = buf .. concat(chunks)
				chunks = {}
			end
			while true do
				if #buf < 2 then return nil end
				local b1, b2 = byte(buf, 1, 2)
				local fin = b1 >= 128
				local rsv = floor(b1 / 16) % 8
				local opcode = b1 % 16
				local masked = b2 >= 128
				local len = b2 % 128
				local pos = 3
				if rsv ~= 0 then return false, 1002, "reserved bits set" end
				if len == 126 then
					if #buf < 4 then return nil end
					local h, l = byte(buf, 3, 4)
					len, pos = h * 256 + l, 5
				elseif len == 127 then
					if #buf < 10 then return nil end
					local b = {byte(buf, 3, 10)}
					if b[1] >= 128 then return false, 1002, "bad 64-bit length" end
					len = 0
					for i = 1, 8 do len = len * 256 + b[i] end
					pos = 11
				end
				if masked then return false, 1002, "server frames must not be masked" end
				local is_control = opcode >= 8
				if is_control then
					if not fin then return false, 1002, "fragmented control frame" end
					if len > 125 then return false, 1002, "control frame too long" end
				elseif opcode ~= OP.CONT and opcode ~= OP.TEXT and opcode ~= OP.BINARY then
					return false, 1002, "unknown opcode " .. opcode
				end
				if len > max_message or (not is_control and frag_len + len > max_message) then
					return false, 1009, "message too big"
				end
				if #buf < pos - 1 + len then return nil end
				local payload = buf:sub(pos, pos - 1 + len)
				buf = buf:sub(pos + len)

				if is_control then
					if opcode == OP.CLOSE then
						local code, reason = 1005, ""
						if #payload >= 2 then
							local h, l = byte(payload, 1, 2)
							code, reason = h * 256 + l, payload:sub(3)
						elseif #payload == 1 then
							return false, 1002, "bad close payload"
						end
						return {opcode = opcode, code = code, reason = reason, data = payload}
					elseif opcode == OP.PING or opcode == OP.PONG then
						return {opcode = opcode, data = payload}
					end
					return false, 1002, "unknown control opcode " .. opcode
				elseif opcode == OP.CONT then
					if not frag_op then return false, 1002, "continuation without a start" end
					frag_parts[#frag_parts + 1] = payload
					frag_len = frag_len + len
					if fin then
						local msg = {opcode = frag_op, data = concat(frag_parts)}
						frag_op, frag_parts, frag_len = nil, {}, 0
						return msg
					end
				else
					if frag_op then return false, 1002, "new message inside a fragmented one" end
					if fin then return {opcode = opcode, data = payload} end
					frag_op, frag_parts, frag_len = opcode, {payload}, len
				end
			end
		end

		return d
	end

	local function close_payload(code, reason)
		if not code then return "" end
		return char(floor(code / 256), code % 256) .. (reason or ""):sub(1, 120)
	end

	--- Opens a connection. opts:
	--   url, token, socket (the socket.core table), now (seconds),
	--   random_bytes(n), connect_timeout (s), max_message (bytes), headers
	-- Returns conn or nil, err (bad URL / no socket library).
	function lib.connect(opts)
		local u, err = M.parse_url(opts.url)
		if not u then return nil, err end
		local socket = opts.socket
		if not socket or not socket.tcp then return nil, "no socket library" end
		local now = opts.now
		local connect_timeout = opts.connect_timeout or 5
		local conn = {state = "connecting", url = u}
		local sock
		local started = now()
		local key = lib.make_key(opts.random_bytes)
		local hbuf = ""
		local decoder = lib.new_decoder(opts.max_message)
		local out, out_pos = {}, 1 -- queued bytes; position in out[1]
		local out_bytes = 0
		local closing_deadline
		local events

		local function emit(ev) events[#events + 1] = ev end

		local function finish(ev)
			if conn.state == "closed" then return end
			conn.state = "closed"
			if sock then pcall(sock.close, sock) end
			sock = nil
			ev.type = "close"
			emit(ev)
		end

		local function queue(bytes)
			out[#out + 1] = bytes
			out_bytes = out_bytes + #bytes
		end

		local function flush()
			while sock and out[1] do
				local data = out[1]
				local last, serr, partial = sock:send(data, out_pos)
				local sent = last or partial or (out_pos - 1)
				if sent >= #data then
					out_bytes = out_bytes - (#data - out_pos + 1)
					table.remove(out, 1)
					out_pos = 1
				else
					out_bytes = out_bytes - (sent + 1 - out_pos)
					out_pos = sent + 1
				end
				if serr and serr ~= "timeout" then
					finish({code = 1006, reason = "", error = "send failed: " .. tostring(serr)})
					return
				end
				if not last then return end -- socket buffer full, try next poll
			end
		end

		local function send_frame(opcode, payload)
			queue(lib.encode_frame(opcode, payload, opts.random_bytes(4)))
		end

		local function read_all()
			local got = {}
			while sock do
				local data, rerr, partial = sock:receive(8192)
				local chunk = data or partial
				if chunk and chunk ~= "" then got[#got + 1] = chunk end
				if rerr == "closed" then
					return concat(got), true
				elseif rerr then
					break -- timeout: nothing more for now
				end
			end
			return concat(got), false
		end

		local function on_frames()
			while conn.state == "open" or conn.state == "closing" do
				local msg, code, why = decoder:next()
				if msg == nil then return end
				if msg == false then
					send_frame(OP.CLOSE, close_payload(code, why))
					flush()
					finish({code = code, reason = why, error = "protocol error: " .. why})
					return
				end
				if msg.opcode == OP.TEXT then
					emit({type = "message", data = msg.data})
				elseif msg.opcode == OP.BINARY then
					emit({type = "binary", data = msg.data})
				elseif msg.opcode == OP.PING then
					send_frame(OP.PONG, msg.data)
				elseif msg.opcode == OP.PONG then
					emit({type = "pong", data = msg.data})
				elseif msg.opcode == OP.CLOSE then
					if conn.state == "open" then
						-- Echo the close as the RFC asks, then drop the socket.
						send_frame(OP.CLOSE, close_payload(msg.code ~= 1005 and msg.code or nil))
						flush()
					end
					finish({code = msg.code, reason = msg.reason, clean = true})
					return
				end
			end
		end

		local function step()
			if conn.state == "connecting" then
				local res, cerr
				if not sock then
					sock, cerr = socket.tcp()
					if not sock then
						finish({code = 1006, error = "socket: " .. tostring(cerr)})
						return
					end
					sock:settimeout(0)
					res, cerr = sock:connect(u.host, u.port)
				else
					local _, writable = socket.select(nil, {sock}, 0)
					if writable and #writable > 0 then
						res, cerr = sock:connect(u.host, u.port)
						if cerr == "already connected" then res, cerr = 1, nil end
					else
						cerr = "timeout"
					end
				end
				if res then
					conn.state = "handshake"
					pcall(sock.setoption, sock, "tcp-nodelay", true)
					queue(lib.handshake_request(u, key, opts.token, opts.headers))
				elseif cerr ~= "timeout" and cerr ~= "Operation already in progress" then
					finish({code = 1006, error = "connect to " .. u.host .. ":" .. u.port
						.. " failed: " .. tostring(cerr)})
					return
				elseif now() - started > connect_timeout then
					finish({code = 1006, error = "connect to " .. u.host .. ":" .. u.port .. " timed out"})
					return
				else
					return
				end
			end

			flush()
			if not sock then return end
			local data, eof = read_all()

			if conn.state == "handshake" then
				hbuf = hbuf .. data
				local ok, res = lib.check_handshake(hbuf, key)
				if ok == nil then
					if eof then
						finish({code = 1006, error = "connection closed during the handshake"})
					elseif now() - started > connect_timeout then
						finish({code = 1006, error = "handshake timed out"})
					end
					return
				elseif not ok then
					finish({code = 1006, status = res.status, error = res.error})
					return
				end
				conn.state = "open"
				emit({type = "open"})
				data = res.rest
			end

			decoder:feed(data)
			on_frames()
			flush()
			if conn.state ~= "closed" and eof then
				finish({code = 1006, reason = "", error = "connection lost"})
			elseif conn.state == "closing" and now() > closing_deadline then
				finish({code = conn.close_code or 1000, reason = "", clean = false})
			end
		end

		--- Runs the connection; returns the events since the last poll.
		function conn.poll()
			events = {}
			if conn.state ~= "closed" then
				local ok, perr = pcall(step)
				if not ok then finish({code = 1006, error = "internal: " .. tostring(perr)}) end
			end
			return events
		end

		function conn.send_text(_, text)
			if conn.state ~= "open" then return nil, "not open" end
			send_frame(OP.TEXT, text)
			local ok, ferr = pcall(flush)
			if not ok then return nil, ferr end
			return true
		end

		function conn.ping(_, data)
			if conn.state ~= "open" then return nil, "not open" end
			send_frame(OP.PING, data or "")
			return true
		end

		function conn.buffered_out()
			return out_bytes
		end

		--- Starts a clean close (or drops the socket if not open yet).
		-- `now_too`: drop the socket right away after sending (shutdown).
		function conn.close(_, code, reason, now_too)
			if conn.state == "closed" then return end
			events = events or {}
			if conn.state == "open" then
				conn.close_code = code or 1000
				send_frame(OP.CLOSE, close_payload(code or 1000, reason))
				pcall(flush)
				conn.state = "closing"
				closing_deadline = now() + 2
				if not now_too then return end
			end
			local saved = events
			events = {}
			finish({code = code or 1000, reason = reason or "", clean = true, local_close = true})
			events = saved
		end

		return conn
	end

	return lib
end

return M
