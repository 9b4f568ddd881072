"""The server benchmark (`make bench-server`): naive pipeline vs raw forward pass vs this server (fp32, INT8).

Pure parts (statistics, arrival schedules, input selection, targets, report rendering) are importable
without torch; the shell (`server_bench`) starts the servers and the load generator as subprocesses.
"""
