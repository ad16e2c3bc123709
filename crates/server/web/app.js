// The SimpleTextIM web client: speaks the protocol's JSON objects over the /ws WebSocket.
