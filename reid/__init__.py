"""comic-reid: comic character re-identification at corpus scale on Ray."""

__version__ = "0.1.0"
