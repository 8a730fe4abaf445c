"""The console's pages, one module per page: `async def render(request: ConsoleRequest) ->
str | Response` (a whole page, built with `daemon.console.html.layout`), and, where a page
has live parts, `async def fragment(request) -> str | Response` for
`.../fragment/{request.route["part"]}` (plain HTML that the page's script puts in place on
a `change` from /console/stream). `signin` and `deployments` are K1's; `box`,
`deployment` and `events` K2's (the plan: /work/notes/console17.md)."""
