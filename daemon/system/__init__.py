"""berthd as a system service: systemd's notify protocol (`notify`: READY, STOPPING,
WATCHDOG), its file descriptor store (`fdstore`: the listening sockets kept across
restarts, FDSTORE=1 / FDNAME= and LISTEN_FDS / LISTEN_FDNAMES), the same protocols' other
side for a berthd without systemd (`supervise`: `berthd --supervise`), the key=value log
lines (`logs`), the open-files limit raised at start (`fd_limit`), which berthd.toml
settings changed since the start (`settings_changes`, said on SIGHUP) and the trio
instrument that logs slow steps of the event loop (`slow_steps`, `BERTH_SLOW_STEP_MS`). May
import nothing of berth's but `config`.
"""
