-- voyager_bench: times every callback the voyager mod runs in a server step
-- (its globalsteps and its NPCs' on_step) with core.get_us_time (wall clock)
-- and os.clock (the process's CPU time: what the mod itself computed, without
-- the time the kernel gave the core to another process), with 20 NPCs idle,
-- then with 10 of them streaming replies at once; writes the samples to
-- <world>/voyager_bench.json and shuts the server down.
-- luacheck: globals core

local setting = function(name, default) return tonumber(core.settings:get("voyager_bench." .. name)) or default end
local persona = core.settings:get("voyager_bench.persona") or "bench-guide"
local NPCS, STREAMING = setting("npcs", 20), setting("streaming", 10)
local WARMUP, IDLE, STREAM = setting("warmup", 30), setting("idle_steps", 200), setting("stream_steps", 200)
local clock, cpu_clock = core.get_us_time, os.clock

local spent, spent_cpu, allocated = 0, 0, 0 -- the mod's, since the last sample
local function timed(fn)
	return function(...)
		local kb, t, c = collectgarbage("count"), clock(), cpu_clock()
		local a, b = fn(...)
		spent_cpu = spent_cpu + (cpu_clock() - c) * 1e6
		spent = spent + (clock() - t)
		local grew = collectgarbage("count") - kb
		if grew > 0 then allocated = allocated + grew end
		return a, b
	end
end

for i, fn in ipairs(core.registered_globalsteps) do
	local origin = core.callback_origins[fn]
	if origin and origin.mod == "voyager" then
		local wrapped = timed(fn)
		core.registered_globalsteps[i] = wrapped
		core.callback_origins[wrapped] = origin
	end
end
local npc_def = core.registered_entities["voyager:npc"]
npc_def.on_step = timed(npc_def.on_step)

local result = {samples = {idle = {}, stream = {}}, cpu = {idle = {}, stream = {}},
	alloc_kb = {idle = 0, stream = 0}, deltas = 0, replies = 0, errors = {}}
local phase, steps, npcs, started = "wait_ready", 0, {}, clock()
local text = "tell me a long story about the old mine and the river and the smith who lived by the bridge "
	.. "and the wolves that came down from the hills one winter"

local function ask(i)
	voyager.talk("bench_player_" .. i, npcs[i], text)
end

voyager.register_on_event(function(ev)
	if phase ~= "stream" then return end
	if ev.type == "delta" then
		result.deltas = result.deltas + 1
	elseif ev.type == "reply" or ev.type == "error" then
		if ev.type == "reply" then result.replies = result.replies + 1 else
			result.errors[#result.errors + 1] = tostring(ev.code) end
		for i = 1, STREAMING do
			if npcs[i] == ev.npc then
				core.after(0, ask, i) -- the player's ask ends after this event: ask again next step
			end
		end
	end
end)

local function finish(why)
	phase = "done"
	result.finish = why
	local f = io.open(core.get_worldpath() .. "/voyager_bench.json", "w")
	f:write(core.write_json(result))
	f:close()
	core.request_shutdown("voyager_bench done", false, 0)
end

local function spawn()
	for i = 1, NPCS do
		local x, z = (i - 1) % 5 * 3 - 6, math.floor((i - 1) / 5) * 3 - 6
		local feet
		for y = 40, -20, -1 do
			if voyager.can_stand({x = x, y = y, z = z}) then feet = {x = x, y = y, z = z}; break end
		end
		if not feet then return finish("no ground") end
		core.forceload_block(feet, true)
		local ent, err = voyager.spawn_npc({x = feet.x, y = feet.y - 0.5, z = feet.z}, persona, "bench" .. i)
		if not ent then return finish("spawn failed: " .. tostring(err)) end
		npcs[i] = ent._data.id
	end
	phase, steps = "warmup", 0
end

core.register_globalstep(function()
	if phase == "done" then return end
	if (clock() - started) / 1e6 > setting("timeout", 120) then return finish("timeout in " .. phase) end
	local sample, sample_cpu, grew = spent, spent_cpu, allocated
	spent, spent_cpu, allocated = 0, 0, 0
	if phase == "wait_ready" and voyager.status().ready then
		phase = "emerge"
		core.emerge_area({x = -16, y = -32, z = -16}, {x = 16, y = 47, z = 16}, function(_, _, remaining)
			if remaining == 0 then spawn() end
		end)
	elseif phase == "warmup" then
		steps = steps + 1
		if steps >= WARMUP then phase, steps = "idle", 0 end
	elseif phase == "idle" or phase == "stream" then
		steps = steps + 1
		local samples = result.samples[phase]
		samples[#samples + 1] = sample
		table.insert(result.cpu[phase], sample_cpu)
		result.alloc_kb[phase] = result.alloc_kb[phase] + grew
		if phase == "idle" and steps >= IDLE then
			phase, steps = "stream", 0
			for i = 1, STREAMING do ask(i) end
		elseif phase == "stream" and steps >= STREAM then
			finish("measured")
		end
	end
end)
