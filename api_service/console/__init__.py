"""The web console: server-rendered pages under `/`, served by the API process beside the
REST API (docs/console.md). Pages call the API's own handlers with the logged-in
session's token; the services decide and audit every call."""
