// Renders an Ollama TEMPLATE with Go's text/template over data shaped like Ollama's (System, Messages with
// ToolCalls, Tools), for tests/test_gguf.py. Tools and call arguments print as JSON, as Ollama's String() methods do.
// Reads {"template", "system", "messages", "tools"} as JSON on stdin; writes the rendered prompt to stdout.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Arguments map[string]any

func (a Arguments) String() string { b, _ := json.Marshal(map[string]any(a)); return string(b) }

type ToolCall struct {
	Function struct {
		Name      string    `json:"name"`
		Arguments Arguments `json:"arguments"`
	} `json:"function"`
}

type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	ToolCalls []ToolCall `json:"tool_calls"`
}

type Tool map[string]any

func (t Tool) String() string { b, _ := json.Marshal(map[string]any(t)); return string(b) }

func main() {
	var in struct {
		Template string    `json:"template"`
		System   string    `json:"system"`
		Messages []Message `json:"messages"`
		Tools    []Tool    `json:"tools"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("ollama").Parse(in.Template))
	data := map[string]any{"System": in.System, "Messages": in.Messages, "Tools": in.Tools}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
