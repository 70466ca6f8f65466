"""The bundled demo agents and their scripted teachers, above the integrations: the calculator agent
(`mentor_agents.demo.calculator`), the SQLite inventory agent (`mentor_agents.demo.inventory`), the chat-model
plumbing of their stand-in teachers (`mentor_agents.demo.scripted`) and `mentor demo` (`mentor_agents.demo.run`)."""
