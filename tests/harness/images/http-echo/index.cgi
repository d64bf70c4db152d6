#!/bin/busybox sh
# shellcheck shell=sh
# One line per request on stderr (kubectl logs), one line of answer naming the pod and $MESSAGE.
host=$(/bin/busybox hostname)
echo "http-echo: $REQUEST_METHOD $REQUEST_URI from $REMOTE_ADDR" >&2
printf 'Content-Type: text/plain\r\n\r\n'
echo "http-echo host=$host message=$MESSAGE"
