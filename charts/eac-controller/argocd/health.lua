-- Argo CD health check for the kinds of proton.eac.dev: EnvironmentAccountConnection,
-- ConnectionAcceptancePolicy and AccountMapping (one script for the three).
-- Install as argocd-cm keys
--   resource.customizations.health.proton.eac.dev_EnvironmentAccountConnection
--   resource.customizations.health.proton.eac.dev_ConnectionAcceptancePolicy
--   resource.customizations.health.proton.eac.dev_AccountMapping
-- Written for Lua 5.1 (gopher-lua, as embedded in Argo CD); `obj` is the live object.
--
--   metadata.deletionTimestamp set            -> Progressing "Deleting"
--   no status yet                             -> Progressing
--   observedGeneration < generation           -> Progressing (spec change not yet seen, or
--                                                held up by a passing fault: Synced's message;
--                                                an AccountMapping's is its Ready condition's)
--   Stalled=True                              -> Degraded (Stalled's message)
--   status.status == "REJECTED" (connection)  -> Degraded
--   Ready=True for an earlier generation      -> Progressing (the edit is not applied yet: a
--                                                retry after a passing fault; Synced's message)
--   Ready=True                                -> Healthy
--   Ready=False on an AccountMapping          -> Degraded (its selectors need an admin)
--   anything else (e.g. PENDING, a retry)     -> Progressing (Ready's message)
local hs = {}

local function condition(status, ctype)
  if status == nil or type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil then
    if c.message ~= nil and c.message ~= "" then
      return c.message
    end
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason
    end
  end
  return fallback
end

local status = obj.status
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting"
  if stalled ~= nil and stalled.status == "True" then
    hs.message = "Deleting: " .. describe(stalled, "stalled")
  elseif ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    hs.message = "Deleting: " .. ready.message
  end
  return hs
end

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to reconcile it"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
local synced = condition(status, "Synced")
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  if synced ~= nil and synced.status == "False" and synced.observedGeneration == generation then
    -- Seen, but held up by a passing fault (throttling, a 5xx): say why.
    hs.message = "Applying generation " .. tostring(generation) .. ": "
      .. describe(synced, "not applied yet")
  else
    hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  end
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Reconciliation is stalled")
  return hs
end

if status.status == "REJECTED" then
  hs.status = "Degraded"
  hs.message = describe(ready, "The management account rejected the connection")
  return hs
end

if ready ~= nil and ready.status == "True" and generation ~= nil
    and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Applying generation " .. tostring(generation) .. ": "
    .. describe(synced, "not applied yet")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if obj.kind == "AccountMapping" and ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "The mapping gives no namespace credentials")
  return hs
end

hs.status = "Progressing"
if status.status == "PENDING" then
  hs.message = describe(ready, "Waiting for the management account to accept the connection")
else
  hs.message = describe(ready, "Waiting for it to become ready")
end
return hs
