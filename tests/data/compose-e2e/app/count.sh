#!/bin/sh
# INCR the counter in Redis (db, reached on backnet), authenticated with the secret.
pw=$(cat /run/secrets/password)
n=$(printf 'AUTH %s\r\nINCR %s\r\n' "$pw" "$COUNTER" | nc -w 2 db 6379 | tr -d '\r' | sed -n 's/^://p')
printf 'Content-Type: text/plain\r\n\r\n%s=%s\n' "$COUNTER" "$n"
