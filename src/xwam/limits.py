"""Resource limits of a serving process, in one place (standard library only: the CLI imports it
to print its defaults without loading torch)."""

# longest instruction a policy accepts: the text encoder truncates anyway, and a server must bound its work
DEFAULT_MAX_PROMPT_CHARS = 4096
# instruction embeddings kept in memory, least recently used dropped (umT5's are 8 MiB each)
DEFAULT_TEXT_CACHE_ENTRIES = 256
# open websocket connections a server accepts; more get HTTP 503
DEFAULT_MAX_CONNECTIONS = 64
# a connection that sends nothing for this long is closed (seconds)
DEFAULT_IDLE_TIMEOUT_S = 600.0
