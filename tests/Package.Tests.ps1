#Requires -Version 7.0
# The package from build.ps1 -Task Package, installed from a throwaway local repository. Every install runs in a child
# pwsh whose HOME and XDG folders are a temporary directory: the repository registrations (PSResourceGet and
# PowerShellGet stores) and the CurrentUser module path live there, never in the user's own. That isolation relies on
# the XDG layout PowerShell uses on Linux and macOS, so the install tests are skipped on Windows.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:Root = (Resolve-Path (Join-Path $PSScriptRoot '..')).Path
    $script:Manifest = Import-PowerShellDataFile (Join-Path $Root 'BastionTools.psd1')
    $script:Version = $Manifest.ModuleVersion
    $script:Nupkg = Join-Path $Root "out/packages/BastionTools.$Version.nupkg"

    # Package when there is no package, or one older than the module just built.
    $built = Get-ChildItem (Split-Path (Get-TestModulePath)) -Recurse -File | Measure-Object -Property LastWriteTimeUtc -Maximum
    if (-not (Test-Path $Nupkg) -or (Get-Item $Nupkg).LastWriteTimeUtc -lt $built.Maximum) {
        $r = Invoke-ChildPwsh -Script "& '$Root/build.ps1' -Task Package" -TimeoutSeconds 600
        if ($r.ExitCode -ne 0) { throw "build.ps1 -Task Package failed ($($r.ExitCode)): $($r.Output) $($r.Error)" }
    }

    $script:Scratch = Join-Path ([IO.Path]::GetTempPath()) ('bt-package-' + [guid]::NewGuid().ToString('n'))
    $script:RepoDir = Join-Path $Scratch 'repo'
    New-Item -ItemType Directory -Force -Path $RepoDir | Out-Null
    Copy-Item $Nupkg $RepoDir
    $script:RepoName = 'BastionTools-test-' + [guid]::NewGuid().ToString('n').Substring(0, 12)

    # A home of its own: HOME and the XDG folders (created first: .NET ignores XDG folders that do not exist).
    function New-TestHome([string] $Name) {
        $h = Join-Path $Scratch $Name
        foreach ($d in '.local/share', '.cache', '.config') { New-Item -ItemType Directory -Force -Path (Join-Path $h $d) | Out-Null }
        @{
            HOME            = $h
            XDG_DATA_HOME   = Join-Path $h '.local/share'
            XDG_CACHE_HOME  = Join-Path $h '.cache'
            XDG_CONFIG_HOME = Join-Path $h '.config'
        }
    }

    # Runs $Script in a child pwsh with that home; the last output line is JSON.
    function Invoke-InHome([hashtable] $HomeEnv, [string] $Script, [hashtable] $Extra = @{}) {
        $environment = $HomeEnv.Clone()
        foreach ($k in $Extra.Keys) { $environment[$k] = $Extra[$k] }
        $r = Invoke-ChildPwsh -Script ("`$ErrorActionPreference = 'Stop'`n" + $Script) -Environment $environment -TimeoutSeconds 300
        if ($r.ExitCode -ne 0) { throw "The child pwsh failed ($($r.ExitCode)): $($r.Output) $($r.Error)" }
        @($r.Output -split "`n" | Where-Object { $_.Trim() })[-1] | ConvertFrom-Json
    }

    # Imports BastionTools from only the home's CurrentUser module path (and $PSHOME/Modules), as a user would.
    function Test-ImportFromHome([hashtable] $HomeEnv) {
        $modules = Join-Path $HomeEnv.XDG_DATA_HOME 'powershell/Modules'
        Invoke-InHome $HomeEnv -Extra @{ PSModulePath = $modules + [IO.Path]::PathSeparator + (Join-Path $PSHOME 'Modules') } -Script @'
Import-Module BastionTools
$m = Get-Module BastionTools
$token = New-RdsIamToken -AccessKey AKIDEXAMPLE -SecretKey secretvalue -Hostname a.b.us-east-1.rds.amazonaws.com -UserName u
[pscustomobject]@{
    ModuleBase = $m.ModuleBase
    Version    = "$($m.Version)"
    Commands   = @(Get-Command -Module BastionTools | ForEach-Object Name | Sort-Object)
    Token      = "$token"
} | ConvertTo-Json -Compress
'@
    }
}

AfterAll {
    # The registrations live in the temporary homes (each child also unregisters in its finally): removing them is all.
    if ($Scratch -and (Test-Path $Scratch)) { Remove-Item $Scratch -Recurse -Force -ErrorAction SilentlyContinue }
}

Describe 'build.ps1 -Task Package' {
    It 'writes out/packages/BastionTools.<version>.nupkg with the manifest''s metadata in its nuspec' {
        $Nupkg | Should -Exist
        Add-Type -AssemblyName System.IO.Compression.FileSystem
        $zip = [IO.Compression.ZipFile]::OpenRead($Nupkg)
        try {
            $entries = @($zip.Entries.FullName)
            $reader = [IO.StreamReader]::new($zip.GetEntry('BastionTools.nuspec').Open())
            try { [xml] $nuspec = $reader.ReadToEnd() } finally { $reader.Dispose() }
        }
        finally { $zip.Dispose() }

        $meta = $nuspec.package.metadata
        $meta.id | Should -Be 'BastionTools'
        $meta.version | Should -Be $Version
        $psData = $Manifest.PrivateData.PSData
        foreach ($tag in $psData.Tags) { $meta.tags -split ' ' | Should -Contain $tag }
        $meta.licenseUrl | Should -Be $psData.LicenseUri
        $meta.projectUrl | Should -Be $psData.ProjectUri
        $meta.releaseNotes | Should -Match "^$([regex]::Escape($Version))"
        $meta.releaseNotes | Should -Match 'New-RdsIamToken'
        $meta.releaseNotes.Trim() | Should -Be $psData.ReleaseNotes.Trim()

        # The built module folder and nothing else (besides the package's own parts).
        $entries | Should -Contain 'BastionTools.psd1'
        $entries | Should -Contain 'BastionTools.psm1'
        $entries | Should -Contain 'BastionTools.Format.ps1xml'
        $entries | Should -Contain 'LICENSE'
        $entries | Should -Contain 'bin/BastionTools.LoadContext.dll'
        $entries | Should -Contain 'bin/lib/BastionTools.dll'
        $entries | Should -Contain 'certs/rds-global-bundle.pem'
        $packageParts = '^(_rels/|package/|\[Content_Types\]\.xml$|BastionTools\.nuspec$)'
        $moduleFiles = Get-ChildItem (Split-Path (Get-TestModulePath)) -Recurse -File |
            ForEach-Object { [IO.Path]::GetRelativePath((Split-Path (Get-TestModulePath)), $_.FullName).Replace('\', '/') }
        @($entries | Where-Object { $_ -notmatch $packageParts } | Sort-Object) | Should -Be @($moduleFiles | Sort-Object)
    }

    It 'installs with Install-PSResource from a local repository and imports from a clean module path' -Skip:$IsWindows {
        $h = New-TestHome 'psresourceget'
        $installed = Invoke-InHome $h -Script @"
Register-PSResourceRepository -Name '$RepoName' -Uri '$RepoDir' -Trusted
try {
    Install-PSResource -Name BastionTools -Repository '$RepoName' -TrustRepository -Scope CurrentUser
    `$r = Get-InstalledPSResource -Name BastionTools
    [pscustomobject]@{ Version = "`$(`$r.Version)"; Location = `$r.InstalledLocation } | ConvertTo-Json -Compress
}
finally { Unregister-PSResourceRepository -Name '$RepoName' }
"@
        $installed.Version | Should -Be $Version
        $installed.Location | Should -BeLike "$($h.HOME)*"

        $imported = Test-ImportFromHome $h
        $imported.Version | Should -Be $Version
        $imported.ModuleBase | Should -BeLike "$($h.HOME)*"
        $imported.Commands | Should -Be @($Manifest.CmdletsToExport | Sort-Object)
        $imported.Token | Should -Match '^a\.b\.us-east-1\.rds\.amazonaws\.com:5432/\?Action=connect&DBUser=u&.*X-Amz-Signature=[0-9a-f]{64}'
    }

    It 'saves with Save-PSResource into a given folder' -Skip:$IsWindows {
        $h = New-TestHome 'save'
        $target = Join-Path $Scratch 'saved'
        New-Item -ItemType Directory -Force -Path $target | Out-Null
        $null = Invoke-InHome $h -Script @"
Register-PSResourceRepository -Name '$RepoName' -Uri '$RepoDir' -Trusted
try { Save-PSResource -Name BastionTools -Repository '$RepoName' -TrustRepository -Path '$target' }
finally { Unregister-PSResourceRepository -Name '$RepoName' }
'{}'
"@
        $saved = Join-Path $target "BastionTools/$Version/BastionTools.psd1"
        $saved | Should -Exist
        (Test-ModuleManifest $saved -ErrorAction Stop).Version.ToString() | Should -Be $Version
    }

    It 'installs with Install-Module (PowerShellGet 2) from a local repository and imports from a clean module path' -Skip:$IsWindows {
        $h = New-TestHome 'powershellget'
        $installed = Invoke-InHome $h -Script @"
Import-Module PowerShellGet -MaximumVersion 2.99
Register-PSRepository -Name '$RepoName' -SourceLocation '$RepoDir' -InstallationPolicy Trusted
try {
    Install-Module -Name BastionTools -Repository '$RepoName' -Scope CurrentUser -Force
    `$m = Get-InstalledModule -Name BastionTools
    [pscustomobject]@{ Version = "`$(`$m.Version)"; Location = `$m.InstalledLocation } | ConvertTo-Json -Compress
}
finally { Unregister-PSRepository -Name '$RepoName' }
"@
        $installed.Version | Should -Be $Version
        $installed.Location | Should -BeLike "$($h.HOME)*"

        $imported = Test-ImportFromHome $h
        $imported.Version | Should -Be $Version
        $imported.ModuleBase | Should -BeLike "$($h.HOME)*"
        $imported.Commands | Should -Be @($Manifest.CmdletsToExport | Sort-Object)
    }
}
