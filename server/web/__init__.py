"""Web plumbing shared by the handlers: errors as JSON, the token and CORS, the cursor cookie and
its key, body readers, the Socket.IO server and the OpenAPI document."""
