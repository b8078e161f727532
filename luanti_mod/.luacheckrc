-- luacheck config for the voyager mod, its specs and the test mod.
-- Run from the repository root: luacheck luanti_mod/voyager luanti_mod/spec
-- (or from luanti_mod/: luacheck voyager spec tests/voyager_test)
std = "lua51"
max_line_length = 120
unused_args = false

-- The engine API, read-only; the mod's own table is the one global it writes.
read_globals = {
	"core",
	"bit",          -- LuaJIT's bit library (optional, looked up with rawget)
	"PcgRandom",
	"SecureRandom",
	"vector",
	"ItemStack",
}
globals = {
	"voyager",
}

-- The pure-library files must not touch the engine or any global.
local pure = {std = "lua51", globals = {}, read_globals = {}}
files["voyager/bitops.lua"] = pure
files["voyager/json.lua"] = pure
files["voyager/ws.lua"] = pure
files["voyager/client.lua"] = pure
files["voyager/http.lua"] = pure
files["voyager/chat.lua"] = pure
files["luanti_mod/voyager/bitops.lua"] = pure
files["luanti_mod/voyager/json.lua"] = pure
files["luanti_mod/voyager/ws.lua"] = pure
files["luanti_mod/voyager/client.lua"] = pure
files["luanti_mod/voyager/http.lua"] = pure
files["luanti_mod/voyager/chat.lua"] = pure

files["spec/sha1.lua"] = pure
files["luanti_mod/spec/sha1.lua"] = pure

-- Specs install a fake `core` and `voyager` as globals, like the engine does.
local spec = {std = "+busted", globals = {"core", "voyager"}}
files["spec"] = spec
files["luanti_mod/spec"] = spec
