local H = require("helpers")

describe("delta streaming into chat", function()
	local sent, t, st
	before_each(function()
		sent, t = {}, 0
		st = H.chat.new_stream({send = function(s) sent[#sent + 1] = s end, now = function() return t end})
	end)

	it("sends whole sentences as soon as they end, not token by token", function()
		for _, d in ipairs({"Hel", "lo", " there", "!", " How", " are", " you?", " Fine"}) do st:push(d) end
		assert.same({"Hello there!", "How are you?"}, sent)
		st:finish("Hello there! How are you? Fine.")
		assert.same({"Hello there!", "How are you?", "Fine."}, sent)
	end)

	it("flushes a waiting fragment after a second, at a word boundary", function()
		st:push("I think that we")
		t = 0.5
		st:tick()
		assert.same({}, sent)
		t = 1.1
		st:tick()
		assert.same({"I think that"}, sent)
		st:finish("I think that we should go.")
		assert.same({"I think that", "we should go."}, sent)
	end)

	it("never shows action markers, even split across deltas", function()
		st:push("Sure. [[ACT")
		st:push("ION:jump]] Up ")
		st:push("I go. ")
		t = 5
		st:tick()
		for _, s in ipairs(sent) do assert.not_matches("ACTION", s) end
		assert.same({"Sure.", "Up I go."}, sent)
	end)

	it("cuts long text without punctuation", function()
		st:push(string.rep("word ", 100))
		assert.is_true(#sent >= 2)
		for _, s in ipairs(sent) do assert.is_true(#s <= 200) end
	end)

	it("cuts at the last line break, and a long run at its last space", function()
		st:push("first line\nsecond line\nthird")
		assert.same({"first line second line"}, sent)
		st:abort()
		sent = {}
		st = H.chat.new_stream({send = function(s) sent[#sent + 1] = s end, now = function() return t end})
		st:push(string.rep("ab ", 80)) -- 240 characters, spaces at every third
		assert.same({string.rep("ab ", 65) .. "ab"}, sent)
	end)

	it("cuts a run with no space at all at the chunk size", function()
		st:push(string.rep("x", 250))
		assert.same({string.rep("x", 200)}, sent)
	end)

	it("shows the final text when nothing streamed", function()
		st:finish("Just the reply.")
		assert.same({"Just the reply."}, sent)
	end)

	it("finishes the streamed version when the final text differs", function()
		st:push("Hello. Some")
		st:finish("Completely different.")
		assert.same({"Hello.", "Some"}, sent)
	end)

	it("flushes what it has on abort and ignores later deltas", function()
		st:push("Half a")
		st:abort()
		st:push(" more")
		assert.same({"Half a"}, sent)
	end)
end)
