-- SHA-1 (FIPS 180-4) and base64 (RFC 4648), just enough for the WebSocket
-- handshake's Sec-WebSocket-Accept check (RFC 6455 section 4.2.2).

local M = {}

local byte, char, rep, floor = string.byte, string.char, string.rep, math.floor

local function be32(s, i)
	local a, b, c, d = byte(s, i, i + 3)
	return ((a * 256 + b) * 256 + c) * 256 + d
end

local function tobytes(n)
	local d = n % 256; n = floor(n / 256)
	local c = n % 256; n = floor(n / 256)
	local b = n % 256; n = floor(n / 256)
	return char(n % 256, b, c, d)
end

--- Returns a SHA-1 function bound to the bit operations `ops` (bitops.new()).
function M.new(ops)
	local bxor, band, bor, bnot, rol, add = ops.bxor, ops.band, ops.bor, ops.bnot, ops.rol, ops.add

	return function(msg)
		local ml = #msg
		-- Padding: 0x80, zeros, then the 64-bit big-endian bit length.
		local bits = ml * 8
		local pad = 64 - ((ml + 9) % 64)
		if pad == 64 then pad = 0 end
		local hi = floor(bits / 4294967296)
		msg = msg .. "\128" .. rep("\0", pad) .. tobytes(hi) .. tobytes(bits % 4294967296)

		local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
		local w = {}
		for chunk = 1, #msg, 64 do
			for i = 0, 15 do w[i] = be32(msg, chunk + i * 4) end
			for i = 16, 79 do
				w[i] = rol(bxor(bxor(w[i - 3], w[i - 8]), bxor(w[i - 14], w[i - 16])), 1)
			end
			local a, b, c, d, e = h0, h1, h2, h3, h4
			for i = 0, 79 do
				local f, k
				if i < 20 then
					f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
				elseif i < 40 then
					f, k = bxor(bxor(b, c), d), 0x6ED9EBA1
				elseif i < 60 then
					f, k = bor(bor(band(b, c), band(b, d)), band(c, d)), 0x8F1BBCDC
				else
					f, k = bxor(bxor(b, c), d), 0xCA62C1D6
				end
				local t = add(rol(a, 5), f, e, k, w[i])
				e, d, c, b, a = d, c, rol(b, 30), a, t
			end
			h0, h1, h2, h3, h4 = add(h0, a), add(h1, b), add(h2, c), add(h3, d), add(h4, e)
		end
		return tobytes(h0) .. tobytes(h1) .. tobytes(h2) .. tobytes(h3) .. tobytes(h4)
	end
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function M.base64(s)
	local out = {}
	for i = 1, #s, 3 do
		local a, b, c = byte(s, i, i + 2)
		local n = a * 65536 + (b or 0) * 256 + (c or 0)
		local c1 = floor(n / 262144) % 64
		local c2 = floor(n / 4096) % 64
		local c3 = floor(n / 64) % 64
		local c4 = n % 64
		out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
			.. (b and B64:sub(c3 + 1, c3 + 1) or "=")
			.. (c and B64:sub(c4 + 1, c4 + 1) or "=")
	end
	return table.concat(out)
end

function M.hex(s)
	return (s:gsub(".", function(ch) return string.format("%02x", byte(ch)) end))
end

return M
