"""Built-in tlbench plugins: ordinary hookimpl modules, registered like third-party ones."""
