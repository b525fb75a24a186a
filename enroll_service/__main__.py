"""`python -m enroll_service`: run the enroll service with settings from the environment."""

from enroll_service.server import main
from quarry.process_logging import setup_logging
from quarry.settings import Settings

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("enroll", settings.log_level)
    main(settings)
