"""The stack driver: the Automation API, previews, drift, throwaway test stacks."""
