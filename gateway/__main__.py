from gateway.main import main

raise SystemExit(main())
