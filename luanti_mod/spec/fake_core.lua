-- A small fake of the Luanti API pieces the mod uses, enough to load the
-- engine-side files (api, settings, npc, actions, talk, commands) under busted.
local H = require("helpers")

local F = {}

local function key(p)
	return math.floor(p.x + 0.5) .. "," .. math.floor(p.y + 0.5) .. "," .. math.floor(p.z + 0.5)
end

local function copy(p) return {x = p.x, y = p.y, z = p.z} end

function F.new(conf)
	local core = {
		logs = {}, chat = {}, chat_all = {}, nodes = {}, entities = {}, objects = {}, players = {},
		commands = {}, privileges = {}, afters = {}, formspecs = {}, time = 0, privs = {},
		on_chat = {}, on_fields = {}, on_leave = {}, globalsteps = {},
	}
	core.registered_nodes = {
		air = {walkable = false}, ["test:stone"] = {walkable = true}, ["test:grass"] = {walkable = false},
	}
	core.registered_items = {
		["default:apple"] = {description = "Apple\nTasty", stack_max = 99},
		["default:torch"] = {description = "Torch", stack_max = 99},
		["default:diamond"] = {description = "Diamond", stack_max = 99},
	}
	conf = conf or {}
	core.settings = {
		get = function(_, name) return conf[name] end,
		get_bool = function(_, name, default)
			if conf[name] == nil then return default end
			return conf[name] == "true"
		end,
	}

	function core.get_current_modname() return "voyager" end
	-- Like the engine's translator, less the escape sequences: "@1".. filled in, "@@" an "@".
	function core.get_translator(domain)
		core.translated_domain = domain
		return function(text, ...)
			local args = {...}
			return (text:gsub("@(.)", function(c)
				if c == "@" then return "@" end
				if c == "n" then return "\n" end
				return tostring(args[tonumber(c)] or "")
			end))
		end
	end
	function core.log(level, msg) core.logs[#core.logs + 1] = {level = level, msg = msg} end
	function core.logged(pattern)
		for _, l in ipairs(core.logs) do if l.msg:find(pattern) then return l end end
	end
	function core.chat_send_player(name, msg)
		core.chat[name] = core.chat[name] or {}
		table.insert(core.chat[name], msg)
	end
	function core.chat_send_all(msg) core.chat_all[#core.chat_all + 1] = msg end
	function core.colorize(_, text) return text end
	function core.formspec_escape(s) return (s:gsub("[%[%];,\\]", "\\%0")) end
	function core.get_us_time() return core.time * 1e6 end
	function core.get_timeofday() return 0.5 end
	function core.dir_to_yaw(dir) return math.atan2(-dir.x, dir.z) end
	function core.write_json(v) return H.json.encode(v) end
	function core.parse_json(s) local ok, v = pcall(H.decode, s); return ok and v or nil end
	function core.after(t, fn, ...) core.afters[#core.afters + 1] = {t = core.time + t, fn = fn, args = {...}} end
	function core.run_afters(dt)
		core.time = core.time + (dt or 10)
		local due = core.afters
		core.afters = {}
		for _, a in ipairs(due) do
			if a.t <= core.time then a.fn(unpack(a.args)) else core.afters[#core.afters + 1] = a end
		end
	end

	-- Nodes: everything is air unless set; y < 0 is stone.
	function core.set_node(p, node) core.nodes[key(p)] = node end
	function core.get_node(p)
		local n = core.nodes[key(p)]
		if n then return n end
		if p.y < 0 then return {name = "test:stone"} end
		return {name = "air"}
	end

	-- Registration
	function core.register_entity(name, def) core.entities[name] = def end
	function core.register_privilege(name, def) core.privileges[name] = def end
	function core.register_chatcommand(name, def) core.commands[name] = def end
	function core.register_on_chat_message(fn) core.on_chat[#core.on_chat + 1] = fn end
	function core.register_on_player_receive_fields(fn) core.on_fields[#core.on_fields + 1] = fn end
	function core.register_on_leaveplayer(fn) core.on_leave[#core.on_leave + 1] = fn end
	function core.register_globalstep(fn) core.globalsteps[#core.globalsteps + 1] = fn end
	function core.register_on_shutdown() end
	function core.check_player_privs(name, privs)
		for p in pairs(privs) do if not (core.privs[name] or {})[p] then return false end end
		return true
	end
	function core.show_formspec(name, formname, fs) core.formspecs[name] = {formname = formname, fs = fs} end

	-- Objects
	local function new_object(pos)
		local o = {pos = copy(pos), vel = {x = 0, y = 0, z = 0}, yaw = 0, removed = false}
		function o.get_pos(self) return not self.removed and copy(self.pos) or nil end
		function o.set_pos(self, p) self.pos = copy(p) end
		function o.move_to(self, p) self.pos = copy(p); self.moved_to = copy(p) end
		function o.get_velocity(self) return copy(self.vel) end
		function o.set_velocity(self, v) self.vel = copy(v) end
		function o.set_acceleration(self, a) self.acc = a end
		function o.set_yaw(self, y) self.yaw = y end
		function o.get_yaw(self) return self.yaw end
		function o.set_armor_groups(self, g) self.armor = g end
		function o.set_nametag_attributes(self, a) self.nametag = a end
		function o.remove(self) self.removed = true end
		function o.is_player() return false end
		function o.get_luaentity(self) return self.ent end
		return o
	end

	function core.add_entity(pos, name, staticdata)
		local def = core.entities[name]
		local obj = new_object(pos)
		local ent = setmetatable({object = obj, name = name}, {__index = def})
		obj.ent = ent
		core.objects[#core.objects + 1] = obj
		if def.on_activate then def.on_activate(ent, staticdata or "", 0) end
		if obj.removed then return nil end
		return obj
	end

	function core.get_objects_inside_radius(pos, r)
		local out = {}
		for _, o in ipairs(core.objects) do
			if not o.removed and voyager.distance(o.pos, pos) <= r then out[#out + 1] = o end
		end
		for _, p in pairs(core.players) do
			if voyager.distance(p.pos, pos) <= r then out[#out + 1] = p end
		end
		return out
	end

	-- Players
	function core.add_player(name, pos, opts)
		opts = opts or {}
		local inv = {items = {}, full = opts.full}
		function inv.room_for_item(_, list, stack) return list == "main" and not inv.full and stack ~= nil end
		function inv.add_item(_, _, stack)
			inv.items[#inv.items + 1] = stack
			return {is_empty = function() return true end}
		end
		local p = {pos = copy(pos), name = name, inv = inv}
		function p.get_player_name() return name end
		function p.get_pos(self) return copy(self.pos) end
		function p.is_player() return true end
		function p.get_inventory() return inv end
		function p.get_look_dir() return {x = 0, y = 0, z = 1} end
		core.players[name] = p
		return p
	end
	function core.get_player_by_name(name) return core.players[name] end
	function core.get_connected_players()
		local out = {}
		for _, p in pairs(core.players) do out[#out + 1] = p end
		return out
	end
	function core.remove_player(name)
		local p = core.players[name]
		core.players[name] = nil
		for _, fn in ipairs(core.on_leave) do fn(p) end
	end

	function core.chat_of(name) return core.chat[name] or {} end
	return core
end

--- Installs a fake core and loads the engine-side files with `client`
-- (a client from client.lua or nil for "not trusted").
--- Loads the engine-side files. With `net` ({game = id, http = false | nil, socket = lib | nil}),
-- net.lua too, as init.lua runs it: the client is the real one over the transport it chooses.
function F.load_mod(conf, client, net)
	local core = F.new(conf)
	_G.core = core
	_G.voyager = {
		modpath = H.MOD:gsub("/$", ""),
		bit = H.ops, json = H.json, ws = H.wsmod, http = H.httpmod,
		client_lib = H.client_lib, chat = H.chat,
	}
	for _, f in ipairs({"api", "settings", "npc", "actions", "talk", "commands"}) do
		dofile(H.MOD .. f .. ".lua")
	end
	if not net then
		voyager.set_client(client)
		return core, _G.voyager
	end
	local loaded = {}
	function core.register_on_mods_loaded(fn) loaded[#loaded + 1] = fn end
	function core.run_mods_loaded() for _, fn in ipairs(loaded) do fn() end end
	function core.run_globalsteps(dt) for _, fn in ipairs(core.globalsteps) do fn(dt or 0.09) end end
	function core.get_game_info() return {id = net.game or "devtest"} end
	function core.get_modpath() return nil end
	_G.PcgRandom = function() return {next = function(_, a) return a end} end
	local http = net.http ~= false and H.fake_http() or nil
	local real_set_client = voyager.set_client
	function voyager.set_client(c)
		voyager.client = c
		real_set_client(c)
	end
	dofile(H.MOD .. "net.lua")({socket = net.socket, socket_problem = "the mod is not trusted", http = http})
	core.http = http
	return core, _G.voyager
end

return F
