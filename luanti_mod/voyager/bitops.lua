-- 32-bit unsigned bit operations.
-- Uses LuaJIT's `bit` library when it is handed in (Luanti runs on LuaJIT),
-- and a pure-Lua implementation otherwise (busted under plain Lua 5.1).
-- Every function returns a number in [0, 2^32).

local floor = math.floor
local MOD = 4294967296 -- 2^32

local M = {}

local function pure()
	-- XOR / AND / OR of two 8-bit values through 4-bit lookup tables.
	local xor4, and4, or4 = {}, {}, {}
	for a = 0, 15 do
		for b = 0, 15 do
			local x, y, o = 0, 0, 0
			local p = 1
			local aa, bb = a, b
			for _ = 1, 4 do
				local ab, bbit = aa % 2, bb % 2
				if ab ~= bbit then x = x + p end
				if ab == 1 and bbit == 1 then y = y + p end
				if ab == 1 or bbit == 1 then o = o + p end
				aa, bb, p = floor(aa / 2), floor(bb / 2), p * 2
			end
			xor4[a * 16 + b] = x
			and4[a * 16 + b] = y
			or4[a * 16 + b] = o
		end
	end
	local function op(tbl)
		return function(a, b)
			a, b = a % MOD, b % MOD
			local r, p = 0, 1
			for _ = 1, 8 do
				local na, nb = a % 16, b % 16
				r = r + tbl[na * 16 + nb] * p
				a, b, p = (a - na) / 16, (b - nb) / 16, p * 16
			end
			return r
		end
	end
	return op(xor4), op(and4), op(or4)
end

--- Builds the operation set. `bitlib` is LuaJIT's `bit` (or nil).
function M.new(bitlib)
	local ops = {}
	if bitlib and bitlib.bxor and bitlib.band then
		local bxor, band, bor, bnot = bitlib.bxor, bitlib.band, bitlib.bor, bitlib.bnot
		local lshift, rshift = bitlib.lshift, bitlib.rshift
		ops.bxor = function(a, b) return bxor(a, b) % MOD end
		ops.band = function(a, b) return band(a, b) % MOD end
		ops.bor = function(a, b) return bor(a, b) % MOD end
		ops.bnot = function(a) return bnot(a) % MOD end
		ops.lshift = function(a, n) return lshift(a, n) % MOD end
		ops.rshift = function(a, n) return rshift(a, n) % MOD end
		ops.native = true
	else
		ops.bxor, ops.band, ops.bor = pure()
		ops.bnot = function(a) return MOD - 1 - a % MOD end
		ops.lshift = function(a, n) return (a * 2 ^ n) % MOD end
		ops.rshift = function(a, n) return floor((a % MOD) / 2 ^ n) end
		ops.native = false
	end
	ops.rol = function(a, n)
		a = a % MOD
		local hi = floor(a / 2 ^ (32 - n))
		return (a * 2 ^ n) % MOD + hi
	end
	ops.add = function(...)
		local s = 0
		for i = 1, select("#", ...) do s = s + select(i, ...) end
		return s % MOD
	end
	return ops
end

return M
