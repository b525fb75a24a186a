"""`python -m ingest_service`: run the ingest process with settings from QUARRY_* variables."""

from ingest_service.server import main
from quarry.process_logging import setup_logging
from quarry.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("ingest", settings.log_level)
    main(settings)
