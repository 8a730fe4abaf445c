"""berthd as a system service: systemd's notify protocol (`notify`: READY, STOPPING,
WATCHDOG) and the key=value log lines (`logs`). May import nothing of berth's.
"""
