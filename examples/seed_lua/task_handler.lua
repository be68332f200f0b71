local json = require("json")
local logger = require("logger")

-- Not on the seed page: the work the seed's handler delegates to.
-- Returns the result, or nil and an error (which nacks the message).
local function process_task(data)
    if type(data) ~= "table" or data.id == nil then
        return nil, "task has no id"
    end
    return {task_id = data.id, action = data.action, status = "done"}
end

local function handler(body)
    local data = json.decode(body)

    logger.info("Processing", {task_id = data.id})

    local result, err = process_task(data)
    if err then
        return nil, err  -- Nack: requeue message
    end

    return result  -- Ack: remove from queue
end

return handler
