"""The data path inside a worker: a task's rows -> COPY byte blocks (stream, with the
read-ahead thread and the --copy-out tee) -> the server (copy)."""
