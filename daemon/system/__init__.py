"""berthd as a system service: systemd's notify protocol (`notify`: READY, STOPPING,
WATCHDOG), the key=value log lines (`logs`) and the open-files limit raised at start
(`fd_limit`). May import nothing of berth's.
"""
