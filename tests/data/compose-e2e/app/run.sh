#!/bin/sh
# Serve until /tmp/crash appears (the test makes it), then fail: restart: on-failure starts a new one.
httpd -f -p 8080 -h /www &
while [ ! -e /tmp/crash ]; do sleep 0.2; done
echo "app: crashing on purpose"
exit 3
