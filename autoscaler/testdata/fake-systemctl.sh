#!/bin/sh
# A stand-in for systemctl in tests of the systemd actuator (no systemd runs
# as PID 1 on CI machines): `fake-systemctl.sh DIR [OPTIONS] VERB [ARGS]`.
# A unit is a `sleep` process, its pid in DIR/UNIT.pid, so a unit outlives
# the autoscaler that started it, as a real one does. Markers a test sets:
# DIR/UNIT.fail (its start fails), DIR/UNIT.stubborn (its stop ends as a
# stop timeout would: Result=timeout). Every call is logged to DIR/calls.
dir=$1
shift
echo "$*" >>"$dir/calls"
while [ "${1#--}" != "$1" ]; do shift; done
verb=$1
shift

# Running: its pid exists and is not a zombie (PID 1 may not reap).
alive() {
  [ -f "$dir/$1.pid" ] || return 1
  st=$(awk '{print $3}' "/proc/$(cat "$dir/$1.pid")/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

status=0
case $verb in
start)
  for u in "$@"; do
    if [ -f "$dir/$u.fail" ]; then
      echo "Job for $u failed because the control process exited with error code." >&2
      echo failed >"$dir/$u.state"
      status=1
      continue
    fi
    if ! alive "$u"; then
      sleep 600 </dev/null >/dev/null 2>&1 &
      echo $! >"$dir/$u.pid"
    fi
    rm -f "$dir/$u.state"
  done
  ;;
stop)
  for u in "$@"; do
    if alive "$u"; then
      kill "$(cat "$dir/$u.pid")"
      if [ -f "$dir/$u.stubborn" ]; then echo timeout >"$dir/$u.result"; else echo success >"$dir/$u.result"; fi
    fi
    rm -f "$dir/$u.pid"
  done
  ;;
list-units)
  for f in "$dir"/*.pid "$dir"/*.state; do
    [ -e "$f" ] || continue
    u=$(basename "$f")
    u=${u%.*}
    if alive "$u"; then
      echo "$u loaded active running Fake $u"
    else
      echo "● $u loaded failed failed Fake $u"
    fi
  done | sort -u
  ;;
show)
  for u in "$@"; do
    [ "${u#--}" != "$u" ] && continue
    printf 'Id=%s\nResult=%s\n\n' "$u" "$(cat "$dir/$u.result" 2>/dev/null || echo success)"
  done
  ;;
*)
  echo "fake systemctl: $verb: not faked" >&2
  status=1
  ;;
esac
exit $status
