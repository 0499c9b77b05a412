-- Runs an Argo CD resource health script the way Argo CD does: the object is the global `obj`
-- and the script sees only the libraries Argo CD opens (base, string, table, math; no io, no os).
-- Usage: lua5.4 -e 'obj = {...}' tests/lua/argocd_health.lua SCRIPT
-- Prints the health status and message on two lines.
local sandbox = {
  obj = obj,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = table.unpack,
  string = string, table = table, math = math,
}
local script, err = loadfile(arg[1], "t", sandbox)
if script == nil then
  io.stderr:write(err, "\n")
  os.exit(2)
end
local hs = script()
if type(hs) ~= "table" then
  io.stderr:write("the health script returned ", type(hs), ", not a table\n")
  os.exit(3)
end
io.write(tostring(hs.status), "\n", tostring(hs.message), "\n")
