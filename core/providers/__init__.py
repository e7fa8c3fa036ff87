"""Outside APIs, one module each, with a sandbox twin used when credentials are absent."""
