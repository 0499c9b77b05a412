-- Argo CD health check for imagebuild.dev/ImageBuild (the object arrives as the global `obj`).
-- Healthy means: the controller has seen the current spec and the image is in the registry.
-- Written for Lua 5.1 (Argo CD's gopher-lua) and runs unchanged on Lua 5.4.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to pick up this ImageBuild"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = obj.metadata and obj.metadata.generation
if status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the controller to report on this ImageBuild"
  end
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if status.imageRef ~= nil then
    hs.message = "Pushed " .. status.imageRef
  elseif status.digest ~= nil then
    hs.message = "Pushed " .. status.digest
  else
    hs.message = ready.message or "Pushed"
  end
  return hs
end

if status.phase == "Failed" and ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message or ready.reason or "Build failed"
  return hs
end

-- Pending, Building, Pushing, or a Ready condition not yet decided.
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
elseif status.phase ~= nil then
  hs.message = status.phase
else
  hs.message = "Waiting for the controller"
end
return hs
