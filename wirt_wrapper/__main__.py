from wirt_wrapper.root.main import main

raise SystemExit(main())
