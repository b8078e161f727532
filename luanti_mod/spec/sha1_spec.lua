local H = require("helpers")

describe("bit operations", function()
	local ops = H.ops
	it("computes 32-bit xor/and/or/not in pure Lua", function()
		assert.equal(0x0F0F0F0F, ops.bxor(0xFFFFFFFF, 0xF0F0F0F0))
		assert.equal(0x00FF0000, ops.band(0x12FF3400, 0x00FF00FF))
		assert.equal(0xFFFFFFFF, ops.bor(0xFFFF0000, 0x0000FFFF))
		assert.equal(0xEDCBA987, ops.bnot(0x12345678))
		assert.equal(0x23456781, ops.rol(0x12345678, 4))
		assert.equal(5, ops.add(0xFFFFFFFF, 6))
	end)

	it("normalizes a signed native library to unsigned results", function()
		-- A stand-in for LuaJIT's bit, which returns signed 32-bit numbers.
		local signed = function(f) return function(...) local r = f(...) return r >= 2 ^ 31 and r - 2 ^ 32 or r end end
		local fake_bit = {bxor = signed(ops.bxor), band = signed(ops.band), bor = signed(ops.bor),
			bnot = signed(ops.bnot), lshift = signed(ops.lshift), rshift = signed(ops.rshift)}
		local native = H.bitops.new(fake_bit)
		assert.is_true(native.native)
		assert.equal(0xFFFFFFFF, native.bxor(0xFFFF0000, 0x0000FFFF))
		local sha = H.sha1lib.new(native)
		assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", H.sha1lib.hex(sha("abc")))
	end)
end)

describe("sha1", function()
	local hex, sha1 = H.sha1lib.hex, H.sha1
	it("matches the FIPS 180 test vectors", function()
		assert.equal("da39a3ee5e6b4b0d3255bfef95601890afd80709", hex(sha1("")))
		assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", hex(sha1("abc")))
		assert.equal("84983e441c3bd26ebaae4aa1f95129e5e54670f1",
			hex(sha1("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
	end)
	it("handles lengths around the block boundary", function()
		assert.equal("c1c8bbdc22796e28c0e15163d20899b65621d65a", hex(sha1(string.rep("a", 55))))
		assert.equal("0098ba824b5c16427bd7a1122a5a442a25ec644d", hex(sha1(string.rep("a", 64))))
		assert.equal("291e9a6c66994949b57ba5e650361e98fc36b1ba", hex(sha1(string.rep("a", 1000))))
	end)
end)

describe("base64", function()
	local b64 = H.sha1lib.base64
	it("encodes the RFC 4648 vectors", function()
		assert.equal("", b64(""))
		assert.equal("Zg==", b64("f"))
		assert.equal("Zm8=", b64("fo"))
		assert.equal("Zm9v", b64("foo"))
		assert.equal("Zm9vYmFy", b64("foobar"))
		assert.equal("AP8=", b64("\0\255"))
	end)
end)

describe("json encoder", function()
	local json = H.json
	it("writes integers as integers (core.write_json writes 1.0)", function()
		assert.equal('{"protocol":1,"score":-1,"t":0.5}', json.encode({protocol = 1, score = -1, t = 0.5}))
	end)
	it("writes arrays, empty arrays and escapes", function()
		assert.equal('[1,2,"a"]', json.encode({1, 2, "a"}))
		assert.equal('{"a":[]}', json.encode({a = json.array()}))
		assert.equal('"q\\"b\\\\n\\nt\\u0001"', json.encode('q"b\\n\nt\1'))
	end)
	it("round-trips through a real decoder", function()
		local v = {type = "ask", text = "héllo \"world\"\n", context = {pos = {1, -2, 3}, nearby = {"a:b"}}}
		assert.same(v, H.decode(json.encode(v)))
	end)
	it("refuses functions", function()
		assert.has_error(function() json.encode({f = print}) end)
	end)
end)
