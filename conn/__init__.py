"""The connection skeleton shared by the gateway shard and the voice session (arikawa's
``utils/ws`` split): the websocket client transport, TLS contexts, backoff with jitter, a
sans-I/O pacemaker (heartbeat deadline, ACK, zombie) and the inbox the one loop sleeps on.
It imports nothing else of shardline's, so both workers build on it and never on each other.
"""
