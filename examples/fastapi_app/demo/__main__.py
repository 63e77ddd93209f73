import sys

from examples.fastapi_app.demo.run import main

sys.exit(main())
