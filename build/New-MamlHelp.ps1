<#
.SYNOPSIS
    Writes the module's MAML help (BastionTools.dll-Help.xml) from the readable sources in docs/help/*.md.

.DESCRIPTION
    platyPS is not used: this script parses a small, fixed markdown format and takes everything the markdown does
    not say (syntax, parameter sets, types, positions, pipeline input, aliases) from the built module itself, so
    the help can't drift from the cmdlets. It fails the build when a cmdlet in the manifest's CmdletsToExport has
    no page, when a page lacks a synopsis or two examples, or when a parameter is undocumented or documented but
    unknown.

    Format of docs/help/<Cmdlet-Name>.md:

        # Cmdlet-Name
        ## Synopsis            one paragraph
        ## Description         paragraphs
        ## Parameters          ### -Name + paragraphs, one per parameter (common parameters excluded)
        ## Examples            ### Example N: title + one ```powershell block + paragraphs of explanation
        ## Outputs             ### Type.Name + paragraphs
        ## Notes               paragraphs

    Run it in a PowerShell of its own (it imports the built module): build.ps1 does.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [Parameter(Mandatory)] [string] $DocsPath,
    [Parameter(Mandatory)] [string] $OutputPath
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

function Split-Paragraphs([string[]] $Lines) {
    $paras = [System.Collections.Generic.List[string]]::new()
    $current = [System.Collections.Generic.List[string]]::new()
    foreach ($line in $Lines + '') {
        if ($line.Trim() -eq '') {
            if ($current.Count) { $paras.Add(($current -join ' ').Trim()); $current.Clear() }
        }
        else { $current.Add($line.Trim()) }
    }
    , $paras.ToArray()
}

function Read-HelpMarkdown([string] $Path) {
    $doc = [ordered]@{ Name = $null; Sections = [ordered]@{} }
    $section = $null; $sub = $null; $inCode = $false
    foreach ($line in (Get-Content -LiteralPath $Path -Encoding utf8)) {
        if ($inCode) {
            if ($line -match '^```\s*$') { $inCode = $false; continue }
            $sub.Code.Add($line); continue
        }
        if ($line -match '^# (\S+)\s*$' -and -not $doc.Name) { $doc.Name = $Matches[1]; continue }
        if ($line -match '^## (.+?)\s*$') {
            $section = [ordered]@{ Lines = [System.Collections.Generic.List[string]]::new(); Items = [System.Collections.Generic.List[object]]::new() }
            $doc.Sections[$Matches[1]] = $section; $sub = $null; continue
        }
        if ($line -match '^### (.+?)\s*$') {
            if (-not $section) { throw "$Path`: '### $($Matches[1])' outside a section." }
            $sub = [ordered]@{ Title = $Matches[1]; Lines = [System.Collections.Generic.List[string]]::new(); Code = [System.Collections.Generic.List[string]]::new(); HasCode = $false }
            $section.Items.Add($sub); continue
        }
        if ($line -match '^```') {
            if (-not $sub) { throw "$Path`: a code block outside a ### subsection." }
            if ($sub.HasCode) { throw "$Path`: '$($sub.Title)' has more than one code block." }
            $sub.HasCode = $true; $inCode = $true; continue
        }
        if ($sub) { $sub.Lines.Add($line) } elseif ($section) { $section.Lines.Add($line) }
    }
    if ($inCode) { throw "$Path`: unterminated code block." }
    $doc
}

$mamlNs = 'http://schemas.microsoft.com/maml/2004/10'
$commandNs = 'http://schemas.microsoft.com/maml/dev/command/2004/10'
$devNs = 'http://schemas.microsoft.com/maml/dev/2004/10'

function Write-Paras([System.Xml.XmlWriter] $w, [string[]] $Paras) {
    $w.WriteStartElement('maml', 'description', $mamlNs)
    if (-not $Paras) { $Paras = @('') }
    foreach ($p in $Paras) { $w.WriteElementString('maml', 'para', $mamlNs, $p) }
    $w.WriteEndElement()
}

$common = [System.Collections.Generic.HashSet[string]]::new([string[]] ([System.Management.Automation.PSCmdlet]::CommonParameters + [System.Management.Automation.PSCmdlet]::OptionalCommonParameters), [StringComparer]::OrdinalIgnoreCase)
$shouldProcessText = @{
    WhatIf  = 'Shows what would happen if the cmdlet runs. The cmdlet is not run.'
    Confirm = 'Prompts you for confirmation before running the cmdlet.'
}

function Write-Parameter([System.Xml.XmlWriter] $w, $Param, [string[]] $Paras, [bool] $Required, [string] $Position, [string] $DefaultValue) {
    $isSwitch = $Param.ParameterType -eq [System.Management.Automation.SwitchParameter]
    $attrs = @($Param.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] })
    $pipe = @()
    if ($attrs | Where-Object ValueFromPipeline) { $pipe += 'ByValue' }
    if ($attrs | Where-Object ValueFromPipelineByPropertyName) { $pipe += 'ByPropertyName' }
    $globbing = [bool] ($Param.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
    $w.WriteStartElement('command', 'parameter', $commandNs)
    $w.WriteAttributeString('required', "$Required".ToLowerInvariant())
    $w.WriteAttributeString('variableLength', "$($Param.ParameterType.IsArray)".ToLowerInvariant())
    $w.WriteAttributeString('globbing', "$globbing".ToLowerInvariant())
    $w.WriteAttributeString('pipelineInput', $(if ($pipe) { "True ($($pipe -join ', '))" } else { 'False' }))
    $w.WriteAttributeString('position', $Position)
    $w.WriteAttributeString('aliases', $(if ($Param.Aliases.Count) { $Param.Aliases -join ', ' } else { 'none' }))
    $w.WriteElementString('maml', 'name', $mamlNs, $Param.Name)
    Write-Paras $w $Paras
    if (-not $isSwitch) {
        $w.WriteStartElement('command', 'parameterValue', $commandNs)
        $w.WriteAttributeString('required', 'true')
        $w.WriteAttributeString('variableLength', "$($Param.ParameterType.IsArray)".ToLowerInvariant())
        $w.WriteString($Param.ParameterType.Name)
        $w.WriteEndElement()
    }
    $w.WriteStartElement('dev', 'type', $devNs)
    $w.WriteElementString('maml', 'name', $mamlNs, $Param.ParameterType.FullName)
    $w.WriteEndElement()
    if ($DefaultValue) { $w.WriteElementString('dev', 'defaultValue', $devNs, $DefaultValue) }
    $w.WriteEndElement()
}

Import-Module $ModulePath -Force
$manifest = Import-PowerShellDataFile $ModulePath
$problems = [System.Collections.Generic.List[string]]::new()

$settings = [System.Xml.XmlWriterSettings]::new()
$settings.Indent = $true
$settings.Encoding = [System.Text.UTF8Encoding]::new($false)
New-Item -ItemType Directory -Force -Path (Split-Path $OutputPath) | Out-Null
$w = [System.Xml.XmlWriter]::Create($OutputPath, $settings)
try {
    $w.WriteStartDocument()
    $w.WriteStartElement('helpItems', 'http://msh')
    $w.WriteAttributeString('schema', 'maml')
    foreach ($name in $manifest.CmdletsToExport) {
        $path = Join-Path $DocsPath "$name.md"
        if (-not (Test-Path $path)) { $problems.Add("$name`: no $path"); continue }
        $doc = Read-HelpMarkdown $path
        $cmd = Get-Command $name -Module BastionTools
        if ($doc.Name -ne $name) { $problems.Add("$path`: the title is '$($doc.Name)', not '$name'") }
        $s = $doc.Sections
        $synopsis = if ($s.Contains('Synopsis')) { (Split-Paragraphs $s['Synopsis'].Lines) -join ' ' } else { '' }
        if (-not $synopsis) { $problems.Add("$name`: no synopsis") }
        $examples = if ($s.Contains('Examples')) { @($s['Examples'].Items) } else { @() }
        if ($examples.Count -lt 2) { $problems.Add("$name`: $($examples.Count) example(s), at least 2 needed") }
        foreach ($e in $examples) { if (-not $e.HasCode) { $problems.Add("$name`: '$($e.Title)' has no code block") } }

        $paramDocs = @{}
        if ($s.Contains('Parameters')) {
            foreach ($item in $s['Parameters'].Items) {
                $pn = $item.Title.TrimStart('-')
                $paramDocs[$pn] = Split-Paragraphs $item.Lines
                if (-not $cmd.Parameters.ContainsKey($pn)) { $problems.Add("$name`: documents -$pn, which it does not have") }
                elseif (-not $paramDocs[$pn]) { $problems.Add("$name`: -$pn has no description") }
            }
        }
        $params = @($cmd.Parameters.Values | Where-Object { -not $common.Contains($_.Name) })
        foreach ($p in $params) { if (-not $paramDocs.ContainsKey($p.Name)) { $problems.Add("$name`: -$($p.Name) is not documented") } }
        $spParams = @($cmd.Parameters.Values | Where-Object { $_.Name -in 'WhatIf', 'Confirm' })
        foreach ($p in $spParams) { $paramDocs[$p.Name] = @($shouldProcessText[$p.Name]) }

        $w.WriteStartElement('command', 'command', $commandNs)
        $w.WriteAttributeString('xmlns', 'maml', $null, $mamlNs)
        $w.WriteAttributeString('xmlns', 'dev', $null, $devNs)
        $w.WriteStartElement('command', 'details', $commandNs)
        $w.WriteElementString('command', 'name', $commandNs, $name)
        $w.WriteElementString('command', 'verb', $commandNs, $cmd.Verb)
        $w.WriteElementString('command', 'noun', $commandNs, $cmd.Noun)
        Write-Paras $w @($synopsis)
        $w.WriteEndElement()
        Write-Paras $w $(if ($s.Contains('Description')) { Split-Paragraphs $s['Description'].Lines } else { @() })

        # Syntax: one item per parameter set, from the cmdlet's metadata (the default set first).
        $w.WriteStartElement('command', 'syntax', $commandNs)
        $sets = @($cmd.ParameterSets | Sort-Object { -not $_.IsDefault })
        foreach ($set in $sets) {
            $w.WriteStartElement('command', 'syntaxItem', $commandNs)
            $w.WriteElementString('maml', 'name', $mamlNs, $name)
            $ordered = @($set.Parameters | Where-Object { -not $common.Contains($_.Name) -or $_.Name -in 'WhatIf', 'Confirm' } |
                    Sort-Object @{ Expression = { if ($_.Position -ge 0) { $_.Position } else { [int]::MaxValue } } }, @{ Expression = { -not $_.IsMandatory } })
            foreach ($sp in $ordered) {
                $position = if ($sp.Position -ge 0) { "$($sp.Position)" } else { 'named' }
                Write-Parameter $w $cmd.Parameters[$sp.Name] $paramDocs[$sp.Name] $sp.IsMandatory $position $null
            }
            $w.WriteEndElement()
        }
        $w.WriteEndElement()

        # Parameters: in the markdown's order, then WhatIf/Confirm.
        $w.WriteStartElement('command', 'parameters', $commandNs)
        foreach ($pn in @($paramDocs.Keys | Sort-Object { $i = [array]::IndexOf(@($s['Parameters'].Items.Title | ForEach-Object { $_.TrimStart('-') }), $_); if ($i -lt 0) { 1000 } else { $i } })) {
            if (-not $cmd.Parameters.ContainsKey($pn)) { continue }
            $p = $cmd.Parameters[$pn]
            $inSets = @($p.ParameterSets.Values)
            $required = $inSets.Count -gt 0 -and -not ($inSets | Where-Object { -not $_.IsMandatory })
            $positions = @($inSets | Where-Object { $_.Position -ge 0 } | ForEach-Object Position | Select-Object -Unique)
            $position = if ($positions.Count) { "$($positions[0])" } else { 'named' }
            Write-Parameter $w $p $paramDocs[$pn] $required $position $null
        }
        $w.WriteEndElement()

        # Input types: what binds from the pipeline.
        $w.WriteStartElement('command', 'inputTypes', $commandNs)
        $inputs = @($cmd.Parameters.Values | Where-Object { $_.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] -and ($_.ValueFromPipeline -or $_.ValueFromPipelineByPropertyName) } })
        foreach ($p in $inputs) {
            $w.WriteStartElement('command', 'inputType', $commandNs)
            $w.WriteStartElement('dev', 'type', $devNs)
            $w.WriteElementString('maml', 'name', $mamlNs, $p.ParameterType.FullName)
            $w.WriteEndElement()
            Write-Paras $w @("Binds -$($p.Name).")
            $w.WriteEndElement()
        }
        $w.WriteEndElement()

        $w.WriteStartElement('command', 'returnValues', $commandNs)
        if ($s.Contains('Outputs')) {
            foreach ($o in $s['Outputs'].Items) {
                $w.WriteStartElement('command', 'returnValue', $commandNs)
                $w.WriteStartElement('dev', 'type', $devNs)
                $w.WriteElementString('maml', 'name', $mamlNs, $o.Title)
                $w.WriteEndElement()
                Write-Paras $w (Split-Paragraphs $o.Lines)
                $w.WriteEndElement()
            }
        }
        $w.WriteEndElement()

        if ($s.Contains('Notes')) {
            $w.WriteStartElement('maml', 'alertSet', $mamlNs)
            $w.WriteStartElement('maml', 'alert', $mamlNs)
            foreach ($p in (Split-Paragraphs $s['Notes'].Lines)) { $w.WriteElementString('maml', 'para', $mamlNs, $p) }
            $w.WriteEndElement()
            $w.WriteEndElement()
        }

        $w.WriteStartElement('command', 'examples', $commandNs)
        foreach ($e in $examples) {
            $w.WriteStartElement('command', 'example', $commandNs)
            $w.WriteElementString('maml', 'title', $mamlNs, "--------- $($e.Title) ---------")
            $w.WriteElementString('dev', 'code', $devNs, ($e.Code -join "`n"))
            $w.WriteStartElement('dev', 'remarks', $devNs)
            foreach ($p in (Split-Paragraphs $e.Lines)) { $w.WriteElementString('maml', 'para', $mamlNs, $p) }
            $w.WriteEndElement()
            $w.WriteEndElement()
        }
        $w.WriteEndElement()

        $w.WriteEndElement() # command:command
    }
    $w.WriteEndElement()
    $w.WriteEndDocument()
}
finally {
    $w.Dispose()
}

if ($problems.Count) {
    Remove-Item $OutputPath -ErrorAction SilentlyContinue
    throw "The help is incomplete:`n  " + ($problems -join "`n  ")
}
Write-Host "   $OutputPath ($(@($manifest.CmdletsToExport).Count) cmdlets)" -ForegroundColor DarkGray
