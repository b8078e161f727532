-- Turns a stream of deltas into chat-sized chunks: whole sentences or lines
-- as soon as they are complete, whatever is buffered after `flush_after`
-- seconds, and never a half-written [[ACTION:...]] marker.

local M = {}

local ACTION_PATTERN = "%[%[ACTION:[^%]]*%]%]"

function M.strip_actions(text)
	return (text:gsub(ACTION_PATTERN, ""))
end

function M.normalize(text)
	return (M.strip_actions(text):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

local function trim(s)
	return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Last index in s that ends a sentence (punctuation, closing quotes or
-- brackets, then the space: its index) or a line; 0 when there is none.
-- string.find does the scanning: this runs on every delta of every stream.
local function last_boundary(s)
	local best, from = 0, 1
	while true do
		local _, e = s:find("[%.!%?:;][\"')%]]*%s", from)
		if not e then break end
		best, from = e, e + 1
	end
	-- The last newline: ".*()\n" would backtrack from every start, quadratic in the buffer.
	local line = s:find("\n[^\n]*$")
	return line and line > best and line or best
end

local function last_space(s, limit)
	return s:sub(1, limit):find("%s%S*$") or 0
end

--- opts: send(text), now(), flush_after (s, default 1), max_chunk (chars, default 200)
function M.new_stream(opts)
	local flush_after = opts.flush_after or 1
	local max_chunk = opts.max_chunk or 200
	local st = {buf = "", shown = "", since = nil, done = false}

	local function emit(raw)
		local text = trim(raw:gsub("%s+", " "))
		st.shown = st.shown .. raw
		if text ~= "" then opts.send(text) end
	end

	-- The part of buf that can be shown: complete markers removed, an
	-- unclosed "[[" (or a trailing "[") held back.
	local function safe_len()
		st.buf = M.strip_actions(st.buf)
		local hold = st.buf:find("[[", 1, true)
		if hold then return hold - 1 end
		if st.buf:sub(-1) == "[" then return #st.buf - 1 end
		return #st.buf
	end

	local function cut(n)
		local raw = st.buf:sub(1, n)
		st.buf = st.buf:sub(n + 1)
		st.since = st.buf ~= "" and opts.now() or nil
		emit(raw)
	end

	function st.push(_, delta)
		if st.done or delta == "" then return end
		if st.buf == "" then st.since = opts.now() end
		st.buf = st.buf .. delta
		while true do
			local n = safe_len()
			local b = last_boundary(st.buf:sub(1, n))
			if b > 0 then
				cut(b)
			elseif n > max_chunk then
				local sp = last_space(st.buf, max_chunk)
				cut(sp > 0 and sp or max_chunk)
			else
				return
			end
		end
	end

	--- Flushes text that has waited long enough.
	function st.tick()
		if st.done or st.buf == "" or not st.since then return end
		if opts.now() - st.since < flush_after then return end
		local n = safe_len()
		if n == 0 then return end
		local sp = last_space(st.buf:sub(1, n), n)
		-- Do not split a word that is still being written unless it is long.
		if sp > 0 then cut(sp) elseif n >= 40 then cut(n) end
	end

	--- The reply arrived: show whatever the player has not seen yet.
	function st.finish(_, final)
		if st.done then return end
		st.done = true
		local shown = M.normalize(st.shown)
		local rest
		if final and final ~= "" then
			local full = M.normalize(final)
			if shown == "" then
				rest = full
			elseif full:sub(1, #shown) == shown then
				rest = full:sub(#shown + 1)
			else
				-- The final text differs from what streamed (the gateway may
				-- have edited it): finish the streamed version.
				rest = M.normalize(st.buf)
			end
		else
			rest = M.normalize(st.buf)
		end
		st.buf = ""
		rest = trim(rest)
		while #rest > 0 do
			local piece = rest
			if #rest > max_chunk * 2 then
				local b = last_boundary(rest:sub(1, max_chunk * 2))
				if b == 0 then b = last_space(rest, max_chunk * 2) end
				if b == 0 then b = max_chunk * 2 end
				piece = rest:sub(1, b)
			end
			rest = trim(rest:sub(#piece + 1))
			emit(piece)
		end
	end

	--- Flushes what is buffered without waiting (error, cancel).
	function st.abort()
		if st.done then return end
		st.done = true
		local rest = M.normalize(st.buf)
		st.buf = ""
		if rest ~= "" then emit(rest) end
	end

	return st
end

return M
