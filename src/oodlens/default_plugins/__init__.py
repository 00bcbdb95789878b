"""The built-in plugins: oodlens's own scorers, explainers and datasets, registered through the
same hooks as any third-party plugin (one module per kind, each importing its objects only
when its hook is called)."""
