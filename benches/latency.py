#!/usr/bin/env python3
# Usage: python3 benches/latency.py BASE_URL TOKEN_FILE WEEKS N  (against a clinic seeded by the load generator)
"""One search at a time (no concurrency): the week + therapist search with the reference as
Type/id (read through the dated window) and as a bare id (the plan without it), on the same
server and data. Prints p50/p99/mean in ms for each form."""
import sys, time, urllib.request, statistics, datetime, random
base, token, weeks, n = sys.argv[1], open(sys.argv[2]).read().strip(), int(sys.argv[3]), int(sys.argv[4])
WEEK0 = datetime.datetime(2027, 1, 4, tzinfo=datetime.timezone.utc)
def iso(d): return d.strftime('%Y-%m-%dT%H:%M:%SZ')
random.seed(7)
cases = [(random.randrange(200), random.randrange(weeks)) for _ in range(n)]
for form in ['typed', 'bare', 'typed']:
    times = []
    for p, w in cases:
        start = WEEK0 + datetime.timedelta(weeks=w)
        actor = f'Practitioner/bench-pr{p}' if form == 'typed' else f'bench-pr{p}'
        url = f'{base}/Appointment?date=ge{iso(start)}&date=lt{iso(start + datetime.timedelta(weeks=1))}&actor={actor}&_count=20'
        req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + token})
        t = time.perf_counter()
        body = urllib.request.urlopen(req).read()
        times.append((time.perf_counter() - t) * 1000)
        assert b'"total"' in body
    times.sort()
    print(f'{form:6} n={n} p50={times[len(times)//2]:.1f} p99={times[int(len(times)*0.99)-1]:.1f} mean={statistics.mean(times):.1f} ms')
