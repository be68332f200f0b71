from wippy_queue.cli import main

raise SystemExit(main())
