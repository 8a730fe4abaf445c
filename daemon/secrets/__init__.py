"""Secrets: values a spec names but never holds (`HF_TOKEN = { secret = "hf-token" }`).

`store` keeps them, one 0600 file each in a 0700 directory under the state dir
(`STATE/secrets/NAME`), written atomically, never in berth.db (whose copies and backups
travel); `SecretStore.read(name)` is how every part that needs a value gets it.
`references` is what a spec asks of the store: every reference with its field path, the
apply-time check that each exists, the values a container's environment gets, and the
template id that changes when one of them does. `tokens` warns about a literal `[env]`
value that looks like a credential; `passwords` hashes and checks the web console's
passwords (salted scrypt). May import nothing of berth's but `config`.
"""
