#!/usr/bin/env bash
# Time left until this task's deadline. Exits 1 once the deadline has passed.
DEADLINE="__DEADLINE__"  # epoch seconds: __DEADLINE_UTC__
now=$(date +%s)
left=$((DEADLINE - now))
if [ "$left" -le 0 ]; then
  echo "time is up: the deadline (__DEADLINE_UTC__) passed $(( (now - DEADLINE) / 60 )) min ago. Stop now; final_model/ is what gets scored."
  exit 1
fi
printf 'time left: %dh %02dm %02ds (deadline __DEADLINE_UTC__)\n' $((left / 3600)) $((left % 3600 / 60)) $((left % 60))
