-- JSON for the wire.
-- Encoding is done here rather than with core.write_json: Luanti's
-- write_json (jsoncpp) writes every number as a double, so `1` goes out as
-- `1.0`, which strict integer fields on the gateway may refuse. Decoding is
-- handed in (core.parse_json in the game, a pure-Lua decoder under busted).

local M = {}

local array_mt = {__jsontype = "array"}

--- Marks a table as a JSON array even when it is empty.
function M.array(t)
	return setmetatable(t or {}, array_mt)
end

local escapes = {
	['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
	["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function encode_string(s)
	return '"' .. s:gsub('[%c"\\]', function(c)
		return escapes[c] or string.format("\\u%04x", c:byte())
	end) .. '"'
end

local function is_array(t)
	if getmetatable(t) == array_mt then return true end
	local n = 0
	for k in pairs(t) do
		if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then return false end
		n = n + 1
	end
	return n > 0 and n == #t
end

local encode

local function encode_value(v, depth, out)
	local tv = type(v)
	if v == nil then
		out[#out + 1] = "null"
	elseif tv == "boolean" then
		out[#out + 1] = v and "true" or "false"
	elseif tv == "number" then
		if v ~= v or v == math.huge or v == -math.huge then
			out[#out + 1] = "null"
		elseif v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then
			out[#out + 1] = string.format("%d", v)
		else
			out[#out + 1] = string.format("%.14g", v)
		end
	elseif tv == "string" then
		out[#out + 1] = encode_string(v)
	elseif tv == "table" then
		if depth > 32 then error("json: nested too deep") end
		if is_array(v) then
			out[#out + 1] = "["
			for i = 1, #v do
				if i > 1 then out[#out + 1] = "," end
				encode_value(v[i], depth + 1, out)
			end
			out[#out + 1] = "]"
		else
			local keys = {}
			for k in pairs(v) do
				if type(k) ~= "string" then error("json: object keys must be strings") end
				keys[#keys + 1] = k
			end
			table.sort(keys) -- deterministic output
			out[#out + 1] = "{"
			for i, k in ipairs(keys) do
				if i > 1 then out[#out + 1] = "," end
				out[#out + 1] = encode_string(k)
				out[#out + 1] = ":"
				encode_value(v[k], depth + 1, out)
			end
			out[#out + 1] = "}"
		end
	else
		error("json: cannot encode a " .. tv)
	end
end

encode = function(v)
	local out = {}
	encode_value(v, 0, out)
	return table.concat(out)
end

M.encode = encode

return M
